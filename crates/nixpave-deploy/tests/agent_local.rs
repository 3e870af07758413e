//! The whole per-host pipeline and the activation agent, run against this machine with a temp profile and
//! state directory (real nix builds, real nix-env profiles, the real detached agent).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nixpave_deploy::{
    deploy_host, rollback_host, Connection, Connector, DeployOptions, Goal, Host, LocalConnector,
    Outcome,
};
use nixpave_remote::{CommandOutput, LocalTransport, Transport, TransportError};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        nix_conf_dir();
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    /// The agent the deploys installed in the sandbox's temp directory.
    fn installed_agent(&self) -> std::path::PathBuf {
        std::fs::read_dir(self.dir.path().join("tmp/nixpave-agent"))
            .expect("agent dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "sh"))
            .expect("installed agent")
    }
    fn profile(&self) -> std::path::PathBuf {
        self.dir.path().join("profiles/system")
    }
    fn host(&self, path: &str, extra: serde_json::Value) -> Host {
        std::fs::create_dir_all(self.dir.path().join("profiles")).expect("profiles dir");
        let mut node = serde_json::json!({
            "hostname": "localhost",
            "stateDir": self.dir.path().join("state"),
            "tempPath": self.dir.path().join("tmp"),
            "confirmTimeout": 3,
            "activationTimeout": 3,
            "profiles": { "system": { "path": path, "profilePath": self.profile() } }
        });
        if let (Some(n), Some(e)) = (node.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                n.insert(k.clone(), v.clone());
            }
        }
        inventory(serde_json::json!({ "local": node }))
            .hosts
            .remove(0)
    }
}

fn deploy(host: &Host, goal: Goal) -> nixpave_deploy::HostReport {
    deploy_with(host, goal, &LocalConnector::default())
}

fn deploy_with(host: &Host, goal: Goal, connector: &dyn Connector) -> nixpave_deploy::HostReport {
    let events = Events::default();
    let opts = DeployOptions {
        goal,
        ..Default::default()
    };
    let sink = events.sink();
    deploy_host(host, connector, &opts, &sink, 1)
}

#[test]
fn deploys_then_noop_then_failed_activation_rolls_back() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    let report = deploy(&sb.host(&good, serde_json::json!({})), Goal::Switch);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(good.as_str()));
    assert_eq!(report.generation, Some(1));

    let again = deploy(&sb.host(&good, serde_json::json!({})), Goal::Switch);
    assert_eq!(again.outcome, Outcome::Unchanged, "{again:?}");
    assert_eq!(generation_count(&sb.profile()), 1);

    let bad = build_system(&[("tag", &unique("bad")), ("fail", "true")]);
    let report = deploy(&sb.host(&bad, serde_json::json!({})), Goal::Switch);
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        report.message.contains("activation failed"),
        "{}",
        report.message
    );
    assert!(
        report
            .log_tail
            .iter()
            .any(|l| l.contains("activation failed on purpose")),
        "{:?}",
        report.log_tail
    );
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(good.as_str()));
    // The failed generation is kept, not deleted.
    assert_eq!(generation_count(&sb.profile()), 2);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sb.dir.path().join("state/system.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["state"], "rolled-back");
    assert_eq!(record["failed_generation"], 2);
    assert_eq!(record["generation"], 1);

    // Manual rollback goes to the generation before the current one: none before 1 here.
    let events = Events::default();
    let manual = rollback_host(
        &sb.host(&good, serde_json::json!({})),
        &LocalConnector::default(),
        Goal::Switch,
        &events.sink(),
        2,
    );
    assert_eq!(manual.outcome, Outcome::Failed, "{manual:?}");
    assert!(
        manual.message.contains("no-previous-generation"),
        "{}",
        manual.message
    );
}

#[test]
fn hanging_activation_times_out_and_rolls_back() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    assert_eq!(
        deploy(&sb.host(&good, serde_json::json!({})), Goal::Switch).outcome,
        Outcome::Deployed
    );
    let hang = build_system(&[("tag", &unique("hang")), ("hang", "true")]);
    let t0 = Instant::now();
    let report = deploy(&sb.host(&hang, serde_json::json!({})), Goal::Switch);
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        report.message.contains("did not finish in time"),
        "{}",
        report.message
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(good.as_str()));
    // The whole hanging activation was killed, not only its first process. The agent itself (its command line
    // names the path too) exits just after writing its final record: give it a moment; the activation's
    // processes would hang on for an hour.
    let running = || {
        let out = std::process::Command::new("pgrep")
            .args(["-a", "-f", &hang])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !running().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = running();
    assert!(left.is_empty(), "left running: {left}");
}

/// A connection whose fresh logins fail: what the deployer sees when new ssh logins are broken.
struct NoNewLogins;
struct NoNewLoginsConn;
impl Connection for NoNewLoginsConn {
    fn transport(&self) -> &dyn Transport {
        &LocalTransport
    }
    fn run_fresh_login(&self, _argv: &[String]) -> Result<CommandOutput, TransportError> {
        Err(TransportError::Connection {
            host: "localhost".into(),
            message: "connection refused".into(),
        })
    }
    fn store_uri(&self) -> Option<String> {
        None
    }
    fn nix_sshopts(&self) -> String {
        String::new()
    }
    fn address(&self) -> &str {
        "127.0.0.1"
    }
}
impl Connector for NoNewLogins {
    fn connect(&self, _host: &Host) -> Result<Box<dyn Connection>, TransportError> {
        Ok(Box::new(NoNewLoginsConn))
    }
}

#[test]
fn no_confirmation_rolls_back_by_itself() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    assert_eq!(
        deploy(&sb.host(&good, serde_json::json!({})), Goal::Switch).outcome,
        Outcome::Deployed
    );
    let next = build_system(&[("tag", &unique("next"))]);
    // A hangup for the agent's whole process group while it waits (the lock names its pid): it is detached
    // from the session that started it, and ignores hangups, so it goes on to roll back.
    let lock = sb.dir.path().join("state/system.lock");
    let hangup = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(pid) = std::fs::read_link(&lock) {
                std::thread::sleep(Duration::from_millis(300));
                let group = format!("-{}", pid.display());
                return std::process::Command::new("kill")
                    .args(["-HUP", "--", &group])
                    .status()
                    .is_ok_and(|s| s.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let report = deploy_with(
        &sb.host(&next, serde_json::json!({})),
        Goal::Switch,
        &NoNewLogins,
    );
    assert!(hangup.join().expect("hangup thread"), "no agent to hang up");
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        report.message.contains("no confirmation"),
        "{}",
        report.message
    );
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(good.as_str()));
}

#[test]
fn failing_health_check_rolls_back_with_its_output() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    assert_eq!(
        deploy(&sb.host(&good, serde_json::json!({})), Goal::Switch).outcome,
        Outcome::Deployed
    );
    let next = build_system(&[("tag", &unique("next"))]);
    let checks = serde_json::json!({ "healthChecks": [
        { "type": "command", "command": "echo service-is-sad; exit 1", "retries": 2, "interval": 0.1 }
    ]});
    let t0 = Instant::now();
    let report = deploy(&sb.host(&next, checks), Goal::Switch);
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        report.message.contains("service-is-sad"),
        "{}",
        report.message
    );
    // Rejected at once, not after the confirmation window (3 s + 11 s of health-check budget).
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(good.as_str()));
}

#[test]
fn dry_activate_leaves_the_profile_untouched() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    assert_eq!(
        deploy(&sb.host(&good, serde_json::json!({})), Goal::Switch).outcome,
        Outcome::Deployed
    );
    let next = build_system(&[("tag", &unique("next"))]);
    let report = deploy(&sb.host(&next, serde_json::json!({})), Goal::DryActivate);
    assert_eq!(report.outcome, Outcome::DryActivated, "{report:?}");
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(good.as_str()));
    assert_eq!(generation_count(&sb.profile()), 1);
    let log = std::fs::read_to_string(sb.dir.path().join("state/system.log")).expect("log");
    assert!(log.contains("would activate"), "{log}");
}

#[test]
fn manual_rollback_returns_to_the_previous_generation() {
    let sb = Sandbox::new();
    let one = build_system(&[("tag", &unique("one"))]);
    let two = build_system(&[("tag", &unique("two"))]);
    assert_eq!(
        deploy(&sb.host(&one, serde_json::json!({})), Goal::Switch).outcome,
        Outcome::Deployed
    );
    assert_eq!(
        deploy(&sb.host(&two, serde_json::json!({})), Goal::Switch).outcome,
        Outcome::Deployed
    );
    let events = Events::default();
    let r = rollback_host(
        &sb.host(&two, serde_json::json!({})),
        &LocalConnector::default(),
        Goal::Switch,
        &events.sink(),
        3,
    );
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert_eq!(resolve(&sb.profile()).as_deref(), Some(one.as_str()));
    assert_eq!(generation_count(&sb.profile()), 2);
}

#[test]
fn activates_deploy_rs_and_home_manager_style_paths() {
    for kind in ["deploy-rs", "activate"] {
        let sb = Sandbox::new();
        let p = build_system(&[("tag", &unique(kind)), ("kind", kind)]);
        let report = deploy(&sb.host(&p, serde_json::json!({})), Goal::Switch);
        assert_eq!(report.outcome, Outcome::Deployed, "{kind}: {report:?}");
        let log = std::fs::read_to_string(sb.dir.path().join("state/system.log")).expect("log");
        assert!(log.contains("test system"), "{kind}: {log}");
        assert!(Path::new(&p)
            .join(if kind == "deploy-rs" {
                "deploy-rs-activate"
            } else {
                "activate"
            })
            .exists());
    }
}

#[test]
fn a_running_deploy_of_the_same_profile_is_not_disturbed() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    let host = sb.host(&good, serde_json::json!({}));
    std::fs::create_dir_all(sb.dir.path().join("state")).expect("state dir");
    // Another agent (a live process) holds the profile's lock.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let lock = sb.dir.path().join("state/system.lock");
    std::os::unix::fs::symlink(other.id().to_string(), &lock).expect("lock");
    let t0 = Instant::now();
    let report = deploy(&host, Goal::Switch);
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert!(
        report.message.contains("still running"),
        "{}",
        report.message
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!sb.profile().exists(), "nothing was changed");
    // A stale lock (dead holder) does not block.
    let _ = other.kill();
    let _ = other.wait();
    let report = deploy(&host, Goal::Switch);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    assert!(!lock.exists(), "lock released");
}

#[test]
fn a_profile_of_another_user_is_activated_as_that_user() {
    let sb = Sandbox::new();
    let p = build_system(&[("tag", &unique("user")), ("kind", "activate")]);
    let mut host = sb.host(&p, serde_json::json!({}));
    host.profiles[0].settings.user = "nobody".into();
    let report = deploy(&host, Goal::Switch);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    let log = std::fs::read_to_string(sb.dir.path().join("state/system.log")).expect("log");
    assert!(log.contains("switch (as nobody)"), "{log}");
}

#[test]
fn a_profile_another_tool_deployed_on_the_wanted_path_is_a_no_op_unless_its_system_is_not_running()
{
    // deploy-rs-style profile (no bin/switch-to-configuration), set by hand as another tool would: nixpave
    // finds it on the wanted path with no record of its own and leaves it alone.
    let sb = Sandbox::new();
    let app = build_system(&[("tag", &unique("foreign")), ("kind", "activate")]);
    let set = |sb: &Sandbox, path: &str| {
        let out = std::process::Command::new("nix-env")
            .arg("-p")
            .arg(sb.profile())
            .args(["--set", path])
            .output()
            .expect("nix-env");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let host = sb.host(&app, serde_json::json!({}));
    set(&sb, &app);
    let report = deploy(&host, Goal::Switch);
    assert_eq!(report.outcome, Outcome::Unchanged, "{report:?}");
    assert!(
        !sb.dir.path().join("state/system.log").exists(),
        "the agent never ran"
    );
    // A system on the wanted path that is not the running one (this machine runs no such system) is
    // activated as usual.
    let sb = Sandbox::new();
    let sys = build_system(&[("tag", &unique("foreignsys"))]);
    let host = sb.host(&sys, serde_json::json!({}));
    set(&sb, &sys);
    let report = deploy(&host, Goal::Switch);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    assert!(
        sb.dir.path().join("state/system.log").exists(),
        "the agent ran"
    );
}

/// Waiting is event-driven (FIFOs and a once-a-second ticker, see agent.sh): nothing of it may outlive the
/// wait. An ssh session ends only when no process holds its output any more, so a ticker (or its `sleep`)
/// still holding the waiter's stdout or stderr would hold up every deploy's round trip; and a ticker left
/// running would hold the waiter's FIFO (the FIFOs themselves are kept, one per role).
#[test]
fn waiting_leaves_no_process_behind_holding_the_sessions_output_or_its_fifo() {
    let sb = Sandbox::new();
    let good = build_system(&[("tag", &unique("good"))]);
    let host = sb.host(&good, serde_json::json!({}));
    assert_eq!(deploy(&host, Goal::Switch).outcome, Outcome::Deployed);
    let state = sb.dir.path().join("state");
    let fifos: Vec<std::path::PathBuf> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "fifo"))
        .collect();
    let wait_fifo = state.join("system.wait-final.fifo");
    assert!(fifos.contains(&wait_fifo), "{fifos:?}");
    assert!(
        fifos.contains(&state.join("system.agent.fifo")),
        "{fifos:?}"
    );
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The deploy ends on the agent's final record; the agent and the tickers exit just after.
    until("processes still hold the FIFOs after the deploy", &|| {
        holders(&fifos).is_empty()
    });

    // A wait as the deployer's sessions run it, with stdout and stderr on pipes of our own, for a record
    // that is not final yet: the waiter blocks (its ticker runs) until the record is final and the waiter
    // is woken the way the agent wakes it.
    let record_path = state.join("system.json");
    let record = std::fs::read_to_string(&record_path).expect("record");
    let id = serde_json::from_str::<serde_json::Value>(&record).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let waiting = record.replace(
        "\"state\":\"confirmed\"",
        "\"state\":\"waiting-confirmation\"",
    );
    assert_ne!(waiting, record);
    std::fs::write(&record_path, &waiting).expect("write record");
    let agent = sb.installed_agent();
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let (mut err_reader, err_writer) = std::io::pipe().expect("pipe");
    use std::os::fd::AsRawFd;
    let link = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("fd link");
    let pipes = [link(writer.as_raw_fd()), link(err_writer.as_raw_fd())];
    let mut waiter = std::process::Command::new("sh")
        .arg(&agent)
        .args(["wait", "-n", "system", "-d"])
        .arg(&state)
        .args(["-i", &id, "-w", "final", "-t", "30"])
        .stdout(writer)
        .stderr(err_writer)
        .spawn()
        .expect("run the waiter");
    until("the waiter never opened its FIFO", &|| {
        !holders(std::slice::from_ref(&wait_fifo)).is_empty()
    });
    // Let the ticker get into its second `sleep 1`, then finish the record and wake the waiter.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&record_path, &record).expect("write record");
    let mut wake = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wait_fifo)
        .expect("open the waiter's FIFO");
    std::io::Write::write_all(&mut wake, b"s\n").expect("wake the waiter");
    drop(wake);
    let status = waiter.wait().expect("waiter");
    assert!(status.success());
    // The waiter is gone; whatever still holds the pipes' write ends would keep an ssh session open.
    assert_eq!(
        holders(&pipes),
        Vec::<String>::new(),
        "processes holding the waiter's output"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut reader, &mut out).expect("read");
    assert!(out.contains(&id), "{out}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut err_reader, &mut err).expect("read");
    until("the waiter's ticker still holds its FIFO", &|| {
        holders(std::slice::from_ref(&wait_fifo)).is_empty()
    });
}

/// Command lines of the other processes that have one of `files` open (pipes as `pipe:[inode]`).
fn holders(files: &[std::path::PathBuf]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| e.file_name().to_string_lossy() != std::process::id().to_string())
        .filter(|e| {
            std::fs::read_dir(e.path().join("fd"))
                .map(|fds| {
                    fds.filter_map(|f| f.ok())
                        .any(|f| std::fs::read_link(f.path()).is_ok_and(|l| files.contains(&l)))
                })
                .unwrap_or(false)
        })
        .map(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .unwrap_or_default()
                .replace('\0', " ")
        })
        .collect()
}

/// The log lines the events carry.
fn logged(events: &Events) -> Vec<String> {
    events
        .0
        .lock()
        .expect("events")
        .iter()
        .filter_map(|e| match e {
            nixpave_deploy::Event::Log { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// A deploy's output reaches the deployer while it runs, and only that deploy's: the run log may still hold an
/// earlier deploy's output when the waiter opens it. The history keeps every run, also one whose agent died
/// before its end.
#[test]
fn the_deployer_hears_only_this_deploy_s_output_and_the_history_keeps_every_run() {
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    let tags = [unique("first"), unique("second"), unique("third")];
    let mut heard = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        if i == 2 {
            // What an agent killed half way leaves: its output in the run log only, newer than the history.
            std::thread::sleep(Duration::from_millis(20));
            let mut run_log = std::fs::OpenOptions::new()
                .append(true)
                .open(state.join("system.run.log"))
                .expect("run log");
            std::io::Write::write_all(
                &mut run_log,
                b"nixpave-agent: deploy killed: half way\nleft by an agent that died\n",
            )
            .expect("write");
        }
        let system = build_system(&[("tag", tag)]);
        let events = Events::default();
        let report = deploy_host(
            &sb.host(&system, serde_json::json!({})),
            &LocalConnector::default(),
            &DeployOptions::default(),
            &events.sink(),
            1,
        );
        assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
        heard.push(logged(&events));
    }
    for (i, tag) in tags.iter().enumerate() {
        let own = format!("test system {tag}: switch");
        assert!(heard[i].iter().any(|l| l.contains(&own)), "{:?}", heard[i]);
        for (j, other) in tags.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                !heard[i].iter().any(|l| l.contains(other.as_str())),
                "deploy {i} heard deploy {j}'s output: {:?}",
                heard[i]
            );
        }
    }
    let history = std::fs::read_to_string(state.join("system.log")).expect("history");
    let at = |what: &str| {
        history
            .find(what)
            .unwrap_or_else(|| panic!("{what} is not in the history: {history}"))
    };
    assert!(at(&tags[0]) < at(&tags[1]));
    assert!(at(&tags[1]) < at("left by an agent that died"));
    assert!(at("left by an agent that died") < at(&tags[2]));

    // The waiter itself, on a run log still holding another deploy's output: it skips that, and prints its
    // own deploy's lines, an unfinished last line included, once the record is final.
    let record = std::fs::read_to_string(state.join("system.json")).expect("record");
    let id = serde_json::from_str::<serde_json::Value>(&record).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let agent = sb.installed_agent();
    let wait = |run_log: &str| {
        std::fs::write(state.join("system.run.log"), run_log).expect("run log");
        let out = std::process::Command::new("sh")
            .arg(&agent)
            .args(["wait", "-n", "system", "-d"])
            .arg(&state)
            .args(["-i", &id, "-w", "final", "-t", "10", "-l", "1"])
            .output()
            .expect("run the waiter");
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = wait("nixpave-agent: deploy other: a -> b\nanother deploy's line\n");
    assert!(!err.contains("another deploy's line"), "{err}");
    let err = wait(&format!(
        "nixpave-agent: deploy {id}: a -> b\nour line\nan unfinished line"
    ));
    assert!(err.contains("our line\nan unfinished line\n"), "{err}");
}
