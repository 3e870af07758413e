//! Real deploys to lab hosts (network namespaces with their own sshd and /nix): ssh master connections,
//! `nix copy`, the detached agent, magic rollback, health checks, keys, rollout rules.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nixpave_deploy::{
    deploy_fleet, deploy_host, DeployOptions, Event, Goal, Host, Outcome, Phase, RolloutSettings,
    SshConnector,
};
use nixpave_lab::testing::{Lab, LabHost};
use nixpave_remote::{InventoryHost, SshOptions};

const STATE_DIR: &str = "/nix/var/nixpave/deploy";
const PROFILE: &str = "/nix/var/nix/profiles/system";

/// One node per lab host (hostname = lab host name), profile `system` → `paths[i]`.
fn hosts(lab: &Lab, paths: &[String], extra: serde_json::Value) -> Vec<Host> {
    let mut nodes = serde_json::Map::new();
    for (h, path) in lab.hosts().iter().zip(paths) {
        let mut node = serde_json::json!({
            "hostname": h.name(),
            "stateDir": STATE_DIR,
            "confirmTimeout": 4,
            "activationTimeout": 4,
            "profiles": { "system": { "path": path } }
        });
        if let (Some(n), Some(e)) = (node.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                n.insert(k.clone(), v.clone());
            }
        }
        nodes.insert(h.name().to_string(), node);
    }
    inventory(serde_json::Value::Object(nodes)).hosts
}

fn profile_of(h: &LabHost) -> String {
    h.sh(&format!("readlink -f {PROFILE}"))
}

fn state_of(h: &LabHost) -> String {
    h.sh(&format!(
        "sed -n 's/.*\"state\":\"\\([^\"]*\\)\".*/\\1/p' {STATE_DIR}/system.json"
    ))
}

fn run(
    hosts: &[Host],
    conn: &SshConnector,
    goal: Goal,
    rollout: RolloutSettings,
) -> nixpave_deploy::FleetReport {
    let events = Events::default();
    let opts = DeployOptions {
        goal,
        ..Default::default()
    };
    let sink = events.sink();
    deploy_fleet(hosts, conn, &opts, &rollout, &sink)
}

fn deploy_one(host: &Host, conn: &SshConnector) -> nixpave_deploy::HostReport {
    let events = Events::default();
    let sink = events.sink();
    deploy_host(host, conn, &DeployOptions::default(), &sink, 0)
}

#[test]
fn five_hosts_in_parallel_with_keys_then_noop_costs_one_login() {
    let lab = Lab::up(5).expect("lab up");
    let conn = connector(&lab);
    let sys = build_system(&[("tag", &unique("five"))]);
    let keys = serde_json::json!({ "keys": {
        "api-token": { "text": "t0ps3cret", "destDir": "/tmp/nixpave-keys", "user": "root",
                       "group": "daemon", "permissions": "0640" },
        "late": { "text": "after", "destDir": "/tmp/nixpave-keys", "uploadAt": "post-activation" }
    }});
    let hs = hosts(&lab, &vec![sys.clone(); 5], keys);
    let logins_before: Vec<usize> = lab.hosts().iter().map(|h| h.accepted_logins()).collect();
    let report = run(&hs, &conn, Goal::Switch, RolloutSettings::default());
    // Two logins per host: the master, and the fresh login that proves new connections still work.
    for (h, before) in lab.hosts().iter().zip(&logins_before) {
        assert_eq!(h.accepted_logins() - before, 2, "{}", h.name());
    }
    assert_eq!(report.handshakes, 10);
    for r in &report.hosts {
        assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
    }
    for h in lab.hosts() {
        assert_eq!(profile_of(h), sys);
        assert_eq!(state_of(h), "confirmed");
        assert_eq!(
            h.sh("stat -c '%a %U %G' /tmp/nixpave-keys/api-token; cat /tmp/nixpave-keys/api-token"),
            "640 root daemon\nt0ps3cret"
        );
        assert_eq!(
            h.sh("stat -c '%a %U %G' /tmp/nixpave-keys/late"),
            "600 root root"
        );
    }
    // No-op: one login (the master) and no activation per host.
    let logins: Vec<usize> = lab.hosts().iter().map(|h| h.accepted_logins()).collect();
    let again = run(&hs, &conn, Goal::Switch, RolloutSettings::default());
    for r in &again.hosts {
        assert_eq!(r.outcome, Outcome::Unchanged, "{r:?}");
    }
    for (h, before) in lab.hosts().iter().zip(logins) {
        assert_eq!(h.accepted_logins() - before, 1, "{}", h.name());
        assert_eq!(h.sh("cat /nix/var/nixpave-test/activations | wc -l"), "1");
    }
}

#[test]
fn activation_failure_hang_and_health_check_roll_back() {
    let lab = Lab::up(3).expect("lab up");
    let conn = connector(&lab);
    let port = 18080;
    let good = build_system(&[("tag", &unique("good")), ("servePort", &port.to_string())]);
    let all = hosts(&lab, &vec![good.clone(); 3], serde_json::json!({}));
    assert!(run(&all, &conn, Goal::Switch, RolloutSettings::default()).all_ok());

    let failing = build_system(&[("tag", &unique("fail")), ("fail", "true")]);
    let hanging = build_system(&[("tag", &unique("hang")), ("hang", "true")]);
    let no_service = build_system(&[("tag", &unique("nosvc")), ("stopService", "true")]);
    let checks = serde_json::json!({ "healthChecks": [
        { "type": "tcp", "port": port, "retries": 2, "interval": 0.2, "timeout": 1 }
    ]});
    let mut bad = hosts(&lab, &[failing, hanging, no_service], checks);
    bad[0].health_checks.clear();
    bad[1].health_checks.clear();
    let report = run(&bad, &conn, Goal::Switch, RolloutSettings::default());
    let by = |i: usize| &report.hosts[i];
    assert_eq!(by(0).outcome, Outcome::RolledBack, "{:?}", by(0));
    assert!(
        by(0).message.contains("activation failed"),
        "{}",
        by(0).message
    );
    assert!(
        by(0).log_tail.iter().any(|l| l.contains("on purpose")),
        "{:?}",
        by(0).log_tail
    );
    assert_eq!(by(1).outcome, Outcome::RolledBack, "{:?}", by(1));
    assert!(
        by(1).message.contains("did not finish in time"),
        "{}",
        by(1).message
    );
    assert_eq!(by(2).outcome, Outcome::RolledBack, "{:?}", by(2));
    assert!(by(2).message.contains("tcp"), "{}", by(2).message);
    assert!(by(2).message.contains("refused"), "{}", by(2).message);
    for h in lab.hosts() {
        assert_eq!(
            profile_of(h),
            good,
            "{} back on the good generation",
            h.name()
        );
        assert_eq!(state_of(h), "rolled-back");
    }
    // The service is back after the rollback re-activated the good generation.
    assert!(std::net::TcpStream::connect((lab.host(2).address(), port)).is_ok());
}

#[test]
fn activation_that_cuts_the_network_rolls_back_by_itself() {
    let lab = Lab::up(1).expect("lab up");
    let conn = connector(&lab);
    let h = lab.host(0);
    let iface = h.interface();
    assert!(!iface.is_empty());
    let good = build_system(&[("tag", &unique("netok")), ("netUp", &iface)]);
    let one = |p: &str| hosts(&lab, &[p.to_string()], serde_json::json!({})).remove(0);
    assert_eq!(deploy_one(&one(&good), &conn).outcome, Outcome::Deployed);
    let cut = build_system(&[("tag", &unique("netcut")), ("netDown", &iface)]);
    let report = deploy_one(&one(&cut), &conn);
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    // The agent notices the lost link right after activation (lab_lockout.rs times it).
    assert!(
        report.message.contains("could no longer be reached"),
        "{}",
        report.message
    );
    assert_eq!(profile_of(h), good);
    // Reachable again: a new ssh login works.
    assert!(h.connect().is_ok());
}

#[test]
fn one_offline_host_does_not_stop_the_others() {
    let lab = Lab::up(3).expect("lab up");
    let conn = connector(&lab);
    lab.host(1).stop_sshd();
    let sys = build_system(&[("tag", &unique("offline"))]);
    let report = run(
        &hosts(&lab, &vec![sys.clone(); 3], serde_json::json!({})),
        &conn,
        Goal::Switch,
        RolloutSettings::default(),
    );
    assert_eq!(report.hosts[0].outcome, Outcome::Deployed);
    assert_eq!(report.hosts[2].outcome, Outcome::Deployed);
    assert_eq!(report.hosts[1].outcome, Outcome::Failed);
    assert_eq!(report.hosts[1].host, lab.host(1).name());
    assert!(
        report.hosts[1].message.contains("cannot connect"),
        "{}",
        report.hosts[1].message
    );
    assert_eq!(report.failed(), 1);
}

#[test]
fn batches_stop_after_the_first_failing_wave() {
    let lab = Lab::up(4).expect("lab up");
    let conn = connector(&lab);
    let good = build_system(&[("tag", &unique("batch"))]);
    let bad = build_system(&[("tag", &unique("batchbad")), ("fail", "true")]);
    let paths = vec![bad, good.clone(), good.clone(), good];
    let rollout = RolloutSettings {
        batch: Some("2".parse().expect("batch")),
        max_failures: Some(1),
        ..Default::default()
    };
    let events = Events::default();
    let sink = events.sink();
    let report = deploy_fleet(
        &hosts(&lab, &paths, serde_json::json!({})),
        &conn,
        &DeployOptions::default(),
        &rollout,
        &sink,
    );
    let outcomes: Vec<Outcome> = report.hosts.iter().map(|r| r.outcome).collect();
    // host1 had no previous generation: nothing to roll back to, its profile is removed again.
    assert_eq!(
        outcomes,
        [
            Outcome::Failed,
            Outcome::Deployed,
            Outcome::Skipped,
            Outcome::Skipped
        ]
    );
    assert!(
        report.hosts[0].message.contains("no-previous-generation"),
        "{}",
        report.hosts[0].message
    );
    assert_eq!(
        lab.host(0).sh(&format!("readlink {PROFILE} || echo none")),
        "none"
    );
    let waves = events
        .0
        .lock()
        .expect("events")
        .iter()
        .filter(|e| matches!(e, Event::Wave { .. }))
        .count();
    assert_eq!(waves, 1);
    assert_eq!(
        lab.host(2).sh(&format!("readlink {PROFILE} || echo none")),
        "none"
    );
}

#[test]
fn dry_activate_leaves_the_profile_untouched() {
    let lab = Lab::up(1).expect("lab up");
    let conn = connector(&lab);
    let one = build_system(&[("tag", &unique("dry1"))]);
    let two = build_system(&[("tag", &unique("dry2"))]);
    let hs = |p: &str| hosts(&lab, &[p.to_string()], serde_json::json!({}));
    assert!(run(&hs(&one), &conn, Goal::Switch, RolloutSettings::default()).all_ok());
    let r = run(
        &hs(&two),
        &conn,
        Goal::DryActivate,
        RolloutSettings::default(),
    );
    assert_eq!(
        r.hosts[0].outcome,
        Outcome::DryActivated,
        "{:?}",
        r.hosts[0]
    );
    assert_eq!(profile_of(lab.host(0)), one);
    assert_eq!(
        lab.host(0)
            .sh(&format!("nix-env -p {PROFILE} --list-generations | wc -l")),
        "1"
    );
}

/// Child half of `killed_deployer_still_rolls_back`: deploys as told by the environment, then gets SIGKILLed.
#[test]
#[ignore = "run as a child process by killed_deployer_still_rolls_back"]
fn child_deployer() {
    let Ok(spec) = std::env::var("NIXPAVE_TEST_CHILD_DEPLOY") else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("spec");
    let inv_host: InventoryHost =
        serde_json::from_value(spec["inventory"].clone()).expect("inventory host");
    let host = inventory(spec["nodes"].clone()).hosts.remove(0);
    let conn = SshConnector::new(
        SshOptions {
            connect_timeout: Duration::from_secs(5),
            known_hosts: inv_host.known_hosts.clone(),
            identity_file: inv_host.identity_file.clone(),
            ..SshOptions::default()
        },
        vec![inv_host],
    );
    let _ = deploy_one(&host, &conn);
}

#[test]
fn killed_deployer_still_rolls_back() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let good = build_system(&[("tag", &unique("kgood"))]);
    let one = |p: &str| hosts(&lab, &[p.to_string()], serde_json::json!({})).remove(0);
    assert_eq!(deploy_one(&one(&good), &conn).outcome, Outcome::Deployed);
    // Activation takes 2 s: the deployer is killed while it runs.
    let slow = build_system(&[("tag", &unique("kslow")), ("delay", "2")]);
    let nodes = serde_json::json!({ h.name(): {
        "hostname": h.name(), "stateDir": STATE_DIR, "confirmTimeout": 3, "activationTimeout": 10,
        "profiles": { "system": { "path": slow } } } });
    let spec = serde_json::json!({
        "nodes": nodes,
        "inventory": { "name": h.name(), "host": h.address(), "port": h.target().port, "user": "root",
                        "identity_file": h.identity_file(), "known_hosts": h.known_hosts() }
    });
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_deployer", "--ignored", "--nocapture"])
        .env("NIXPAVE_TEST_CHILD_DEPLOY", spec.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child deployer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(h) != "activating" {
        assert!(Instant::now() < deadline, "activation never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("SIGKILL the deployer");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(h) != "rolled-back" {
        assert!(
            Instant::now() < deadline,
            "no rollback: state {}",
            state_of(h)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(profile_of(h), good);
    assert!(h
        .sh(&format!("cat {STATE_DIR}/system.json"))
        .contains("\"reason\":\"no-confirmation\""));
}

#[test]
fn build_on_target_builds_there_not_here() {
    let lab = Lab::up(1).expect("lab up");
    let conn = connector(&lab);
    nix_conf_dir();
    let tag = unique("remote");
    let drv = std::process::Command::new("nix-instantiate")
        .arg(fixtures().join("system.nix"))
        .args(["--argstr", "tag", &tag])
        .output()
        .expect("nix-instantiate");
    let drv = String::from_utf8_lossy(&drv.stdout).trim().to_string();
    let out = std::process::Command::new("nix-store")
        .args(["-q", "--outputs", &drv])
        .output()
        .expect("nix-store -q");
    let out = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        drv.ends_with(".drv") && out.starts_with("/nix/store/"),
        "{drv} {out}"
    );
    let h = lab.host(0);
    let nodes = serde_json::json!({ h.name(): {
        "hostname": h.name(), "stateDir": STATE_DIR, "confirmTimeout": 4,
        "profiles": { "system": { "path": { "drv": drv, "out": out } } } } });
    let host = inventory(nodes).hosts.remove(0);
    let events = Events::default();
    let sink = events.sink();
    let opts = DeployOptions {
        build_on_target: true,
        ..Default::default()
    };
    let report = deploy_host(&host, &conn, &opts, &sink, 0);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    assert_eq!(profile_of(h), out);
    let here = std::process::Command::new("nix-store")
        .args(["--check-validity", &out])
        .output()
        .expect("nix-store");
    assert!(!here.status.success(), "{out} was built locally");
}

#[test]
fn every_kind_of_health_check_passes_on_a_healthy_host() {
    let lab = Lab::up(1).expect("lab up");
    let conn = connector(&lab);
    let h = lab.host(0);
    let port = 18081;
    let tag = unique("healthy");
    let sys = build_system(&[("tag", &tag), ("servePort", &port.to_string())]);
    let url = format!("http://{}:{port}/", h.address());
    let checks = serde_json::json!({ "healthChecks": [
        { "type": "command", "command": "test -f /nix/var/nixpave-test/current" },
        { "type": "tcp", "port": port },
        { "type": "tcp", "port": port, "from": "target" },
        { "type": "http", "url": url, "body": format!("service {tag} ok") },
        { "type": "http", "url": format!("http://127.0.0.1:{port}/"), "from": "target", "body": "ok" }
    ]});
    let host = hosts(&lab, std::slice::from_ref(&sys), checks).remove(0);
    let report = deploy_one(&host, &conn);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    assert_eq!(profile_of(h), sys);
}

// ---- NixOS-shaped hosts: no tools at FHS paths, nix only in the default profile, NixOS's session PATH ----

/// Keys, a fresh deploy, a no-op, and a failing activation that rolls back, on NixOS-shaped hosts.
#[test]
fn nixos_shaped_hosts_deploy_with_keys_then_noop_then_roll_back_a_failed_activation() {
    let lab = Lab::up_nixos(2).expect("lab up");
    let conn = connector(&lab);
    for h in lab.hosts() {
        assert_eq!(
            h.sh("command -v ln; ls /usr/bin | tr '\\n' ' '"),
            "/run/current-system/sw/bin/ln\nbash env sh"
        );
    }
    let sys = build_system(&[("tag", &unique("nx"))]);
    let keys = serde_json::json!({ "keys": {
        "api-token": { "text": "t0ps3cret", "destDir": "/run/keys", "user": "root",
                       "group": "daemon", "permissions": "0640" },
        "late": { "text": "after", "destDir": "/run/keys", "uploadAt": "post-activation" }
    }});
    let hs = hosts(&lab, &vec![sys.clone(); 2], keys);
    let report = run(&hs, &conn, Goal::Switch, RolloutSettings::default());
    for r in &report.hosts {
        assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
        assert_eq!(r.generation, Some(1), "{r:?}");
    }
    for h in lab.hosts() {
        assert_eq!(profile_of(h), sys);
        assert_eq!(state_of(h), "confirmed");
        assert_eq!(
            h.sh("stat -c '%a %U %G' /run/keys/api-token; cat /run/keys/api-token; echo; stat -c '%a' /run/keys/late"
            ),
            "640 root daemon\nt0ps3cret\n600"
        );
        // The agent went to root's private directory, not to a shared name in /tmp.
        assert_eq!(
            h.sh("stat -c '%a %U' /tmp/nixpave-agent; ls /tmp/nixpave-agent | grep -c '^agent-'; ls /tmp | grep -c '^nixpave-agent-' || true"
            ),
            "700 root\n1\n0"
        );
    }
    let again = run(&hs, &conn, Goal::Switch, RolloutSettings::default());
    for r in &again.hosts {
        assert_eq!(r.outcome, Outcome::Unchanged, "{r:?}");
    }

    // host1's next generation fails to activate and rolls back; host2's deploys.
    let failing = build_system(&[("tag", &unique("nxfail")), ("fail", "true")]);
    let next = build_system(&[("tag", &unique("nxnext"))]);
    let report = run(
        &hosts(&lab, &[failing, next.clone()], serde_json::json!({})),
        &conn,
        Goal::Switch,
        RolloutSettings::default(),
    );
    let (first, second) = (&report.hosts[0], &report.hosts[1]);
    assert_eq!(first.outcome, Outcome::RolledBack, "{first:?}");
    assert!(
        first.message.contains("activation failed"),
        "{}",
        first.message
    );
    assert!(
        first.log_tail.iter().any(|l| l.contains("on purpose")),
        "{:?}",
        first.log_tail
    );
    assert_eq!(second.outcome, Outcome::Deployed, "{second:?}");
    assert_eq!(profile_of(lab.host(0)), sys);
    assert_eq!(state_of(lab.host(0)), "rolled-back");
    assert_eq!(profile_of(lab.host(1)), next);
    // The failed generation is kept, the profile points at the good one again.
    assert_eq!(
        lab.host(0).sh(&format!(
            "nix-env -p {PROFILE} --list-generations | wc -l; readlink {PROFILE}"
        )),
        "2\nsystem-1-link"
    );
}

/// Magic rollback by confirmation timeout: the new generation cuts the network, so no new login can
/// confirm it, and the NixOS-shaped host goes back by itself.
#[test]
fn nixos_shaped_host_rolls_back_by_itself_without_confirmation() {
    let lab = Lab::up_nixos(1).expect("lab up");
    let conn = connector(&lab);
    let h = lab.host(0);
    let iface = h.interface();
    assert!(!iface.is_empty());
    let good = build_system(&[("tag", &unique("nxnetok")), ("netUp", &iface)]);
    let one = |p: &str| hosts(&lab, &[p.to_string()], serde_json::json!({})).remove(0);
    assert_eq!(deploy_one(&one(&good), &conn).outcome, Outcome::Deployed);
    // A subtle lockout the agent cannot see from inside: new logins are refused (root's key is gone) while
    // the open connection lives on. Only the missing confirmation rolls it back.
    let cut = build_system(&[("tag", &unique("nxkeygone")), ("dropKey", "true")]);
    let report = deploy_one(&one(&cut), &conn);
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        report.message.contains("no confirmation"),
        "{}",
        report.message
    );
    assert_eq!(profile_of(h), good);
    assert!(h
        .sh(&format!("cat {STATE_DIR}/system.json"))
        .contains("\"reason\":\"no-confirmation\""));
    assert!(h.connect().is_ok());
}

/// Starts the agent on `h` detached, as `env -i ENV… /bin/sh AGENT run …` (an empty environment plus `env`).
fn start_agent_with_env(
    t: &dyn nixpave_remote::Transport,
    agent: &str,
    a: &nixpave_deploy::agent::Activation,
    env: &[&str],
) {
    let mut argv: Vec<String> = ["setsid", "env", "-i"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(env.iter().map(|s| s.to_string()));
    argv.extend(["/bin/sh".to_string(), agent.to_string()]);
    argv.extend(a.run_args());
    let script = format!(
        "{} </dev/null >/dev/null 2>&1 &",
        nixpave_remote::shell_join(&argv)
    );
    let out = t
        .run(&["sh".into(), "-c".into(), script], None)
        .expect("start the agent");
    assert!(out.success(), "{}", out.stderr_tail(5));
}

fn wait_for_state(h: &LabHost, id: &str, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let record = h.sh(&format!("cat {STATE_DIR}/system.json"));
        if record.contains(&format!("\"id\":\"{id}\"")) && state_of(h) == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deploy {id} never reached {wanted}: {record}\nlog:\n{}",
            h.sh(&format!("tail -n 20 {STATE_DIR}/system.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent needs nothing from its environment: on a NixOS-shaped host, started with `env -i` or with
/// systemd's environment for services (whose PATH has only FHS directories), it activates, waits for the
/// confirmation and rolls back without it. The same agent without its own PATH line fails there.
#[test]
fn agent_runs_on_a_nixos_shaped_host_with_an_empty_or_a_systemd_environment() {
    use nixpave_deploy::agent::{Activation, AGENT_SCRIPT};
    use nixpave_remote::{Transport, UploadSpec};

    let lab = Lab::up_nixos(1).expect("lab up");
    let conn = connector(&lab);
    let h = lab.host(0);
    let good = build_system(&[("tag", &unique("envgood"))]);
    let next = build_system(&[("tag", &unique("envnext"))]);
    let unconfirmed = build_system(&[("tag", &unique("envnoconf"))]);
    let one = |p: &str| hosts(&lab, &[p.to_string()], serde_json::json!({})).remove(0);
    assert_eq!(deploy_one(&one(&good), &conn).outcome, Outcome::Deployed);
    // Dry activations push the other generations without touching the profile.
    for p in [&next, &unconfirmed] {
        let events = Events::default();
        let sink = events.sink();
        let opts = DeployOptions {
            goal: Goal::DryActivate,
            ..Default::default()
        };
        let r = deploy_host(&one(p), &conn, &opts, &sink, 0);
        assert_eq!(r.outcome, Outcome::DryActivated, "{r:?}");
    }
    assert_eq!(profile_of(h), good);

    let t = h.connect().expect("connect");
    let activation = |path: &str, id: &str| {
        let mut a = Activation::for_profile(&one(path).profiles[0], Goal::Switch, id);
        a.confirm_timeout = 3;
        a.activation_timeout = 10;
        a
    };
    let a = activation(&next, "envempty1");
    let agent = a.agent_path();
    let dir = a.agent_dir();
    let out = t
        .run(
            &[
                "mkdir".into(),
                "-p".into(),
                "-m".into(),
                "0700".into(),
                dir.clone(),
            ],
            None,
        )
        .expect("mkdir");
    assert!(out.success());
    let upload = |dest: &str, script: &str| {
        t.upload(
            script.as_bytes(),
            &UploadSpec {
                dest: dest.into(),
                mode: 0o700,
                owner: Some("root:root".into()),
            },
        )
        .expect("upload the agent");
    };
    upload(&agent, &AGENT_SCRIPT);

    // An empty environment; confirmed through a new login.
    start_agent_with_env(&t, &agent, &a, &[]);
    wait_for_state(h, &a.id, "waiting-confirmation");
    assert!(h
        .connect()
        .expect("new login")
        .run(&a.confirm_argv(), None)
        .expect("confirm")
        .success());
    wait_for_state(h, &a.id, "confirmed");
    assert_eq!(profile_of(h), next);

    // systemd's environment for services: an FHS-only PATH. Nobody confirms: magic rollback.
    let b = activation(&unconfirmed, "envsystemd2");
    start_agent_with_env(
        &t,
        &agent,
        &b,
        &[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "LANG=C.UTF-8",
            "INVOCATION_ID=0123456789abcdef0123456789abcdef",
            "SYSTEMD_EXEC_PID=1",
        ],
    );
    wait_for_state(h, &b.id, "waiting-confirmation");
    assert_eq!(profile_of(h), unconfirmed);
    wait_for_state(h, &b.id, "rolled-back");
    assert_eq!(profile_of(h), next);
    assert!(h
        .sh(&format!("cat {STATE_DIR}/system.json"))
        .contains("\"reason\":\"no-confirmation\""));

    // Control: the same agent without its PATH line cannot even take its lock on this host.
    let bare = AGENT_SCRIPT.replace(&nixpave_remote::path_prelude(), "");
    assert_ne!(bare, *AGENT_SCRIPT);
    let bare_path = format!("{dir}/agent-without-path.sh");
    upload(&bare_path, &bare);
    let c = activation(&unconfirmed, "envbare3");
    start_agent_with_env(&t, &bare_path, &c, &[]);
    // Its failure is the event to wait for (the log line), not a guess of how long it takes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h
        .sh(&format!("tail -n 5 {STATE_DIR}/system.log"))
        .contains("not found")
    {
        assert!(
            Instant::now() < deadline,
            "the agent without PATH never failed: {}",
            h.sh(&format!("tail -n 5 {STATE_DIR}/system.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let record = h.sh(&format!("cat {STATE_DIR}/system.json"));
    assert!(!record.contains("envbare3"), "{record}");
    assert_eq!(profile_of(h), next);
}

#[test]
fn a_host_pushes_as_soon_as_its_own_profile_is_built() {
    // Streaming: host1's profile builds at once, host2's takes 6 s; host1 is deployed while host2's still
    // builds, and host2 follows once its build is done.
    let lab = Lab::up(2).expect("lab up");
    let conn = connector(&lab);
    let quick = instantiate_system(&[("tag", &unique("quick"))]);
    let slow = instantiate_system(&[("tag", &unique("slow")), ("buildDelay", "6")]);
    let mut nodes = serde_json::Map::new();
    for (h, path) in lab.hosts().iter().zip([&quick, &slow]) {
        nodes.insert(
            h.name().to_string(),
            serde_json::json!({ "hostname": h.name(), "stateDir": STATE_DIR,
                                "profiles": { "system": { "path": path } } }),
        );
    }
    let hosts = inventory(serde_json::Value::Object(nodes)).hosts;
    let mut opts = DeployOptions::default();
    let builds =
        std::sync::Arc::new(nixpave_deploy::fleet::Builds::new(&hosts, &opts).expect("builds"));
    opts.builds = Some(std::sync::Arc::clone(&builds));
    let started = Instant::now();
    let finished: std::sync::Mutex<Vec<(String, Duration)>> = Default::default();
    let phases: std::sync::Mutex<Vec<(String, Phase)>> = Default::default();
    let sink = |e: Event| match e {
        Event::Finished { report } => finished
            .lock()
            .expect("lock")
            .push((report.host, started.elapsed())),
        Event::Phase { host, phase } => phases.lock().expect("lock").push((host, phase)),
        _ => {}
    };
    let (report, built) = std::thread::scope(|s| {
        let build = s.spawn(|| builds.run(&opts, &|_, _| {}));
        let report = deploy_fleet(&hosts, &conn, &opts, &RolloutSettings::default(), &sink);
        (report, build.join().expect("build thread"))
    });
    assert_eq!(built.expect("built"), 2);
    assert!(report.all_ok(), "{:?}", report.hosts);
    let finished = finished.into_inner().expect("lock");
    let at = |name: &str| {
        finished
            .iter()
            .find(|(h, _)| h == name)
            .map(|(_, t)| *t)
            .expect("finished")
    };
    assert!(
        at("host1") < Duration::from_secs(5),
        "host1 waited for host2's build: {finished:?}"
    );
    assert!(at("host2") >= Duration::from_secs(6), "{finished:?}");
    // Waiting for its build and pushing are one `push` phase: announced once, not twice.
    let phases = phases.into_inner().expect("lock");
    for host in ["host1", "host2"] {
        let of: Vec<Phase> = phases
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, p)| *p)
            .collect();
        assert_eq!(
            of.iter().filter(|p| **p == Phase::Push).count(),
            1,
            "{host}: {of:?}"
        );
    }
    assert_eq!(
        profile_of(&lab.hosts()[1]),
        slow["out"].as_str().expect("out")
    );
}

/// A minimal HTTP file server (GET only) on `addr`, counting the `.narinfo` requests per client address:
/// enough for nix's HTTP binary cache protocol.
fn serve_dir(
    addr: &str,
    dir: std::path::PathBuf,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind((addr, 0)).expect("bind on the bridge");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    if path.ends_with(".narinfo") {
                        log.lock().expect("lock").push(peer.clone());
                    }
                    let file = dir.join(path.trim_start_matches('/'));
                    let reply = match std::fs::read(&file) {
                        Ok(body) if !path.contains("..") => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend(body);
                            r
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    if out.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn through_a_signed_binary_cache_the_closure_is_uploaded_once_and_every_target_fetches_it() {
    let lab = Lab::up(3).expect("lab up");
    let conn = connector(&lab);
    let sys = build_system(&[("tag", &unique("cache"))]);
    let work = tempfile::tempdir().expect("tempdir");
    let cache_dir = work.path().join("cache");
    let key = work.path().join("cache.sec");
    let out = std::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "generate-secret",
        ])
        .args(["--key-name", "nixpave-test-cache"])
        .output()
        .expect("nix key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&key, &out.stdout).expect("key");
    // Served over HTTP from the lab's bridge address, as a deployer would serve it to its fleet.
    let bridge = format!("10.77.{}.1", lab.state().subnet);
    std::fs::create_dir_all(&cache_dir).expect("cache dir");
    let (port, requests) = serve_dir(&bridge, cache_dir.clone());
    let cache = nixpave_deploy::cache::Cache::new(
        &format!(
            "file://{}?secret-key={}&compression=none",
            cache_dir.display(),
            key.display()
        ),
        Some(&format!("http://{bridge}:{port}")),
        None,
        &Default::default(),
    )
    .expect("cache");
    assert!(cache.public_key.starts_with("nixpave-test-cache:"));
    let hosts = hosts(&lab, &vec![sys.clone(); 3], serde_json::json!({}));
    let opts = DeployOptions {
        cache: Some(std::sync::Arc::new(cache)),
        ..Default::default()
    };
    let events = Events::default();
    let sink = events.sink();
    let report = deploy_fleet(&hosts, &conn, &opts, &RolloutSettings::default(), &sink);
    assert!(report.all_ok(), "{:?}", report.hosts);
    for h in lab.hosts() {
        assert_eq!(profile_of(h), sys);
    }
    // One upload: the system's narinfo is in the cache once, signed.
    let hash = sys
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .expect("hash");
    let narinfo =
        std::fs::read_to_string(cache_dir.join(format!("{hash}.narinfo"))).expect("narinfo");
    assert!(narinfo.contains("Sig: nixpave-test-cache:"), "{narinfo}");
    // Every target fetched it from the cache itself.
    let mut peers = requests.lock().expect("lock").clone();
    peers.sort();
    peers.dedup();
    let mut addresses: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| h.address().to_string())
        .collect();
    addresses.sort();
    assert_eq!(peers, addresses);
}

#[test]
fn a_large_flake_deploys_its_first_chunk_while_the_next_evaluates() {
    // Chunks of one node. Evaluating host2 imports a derivation (import from derivation) whose build waits
    // until host1 is deployed: host2 can only be evaluated, and deployed, if host1's deploy does not wait for
    // the whole fleet's evaluation. host3 does not evaluate: it alone fails.
    nix_conf_dir();
    let lab = Lab::up(3).expect("lab up");
    let conn = connector(&lab);
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("host1-deployed");
    let tag = unique("pipeline");
    let opts = DeployOptions::default();
    let listed = listed_node_by_node(
        dir.path(),
        &format!(
            r#"{{ outputs = {{ self }}: let
  sys = tag: import ./system.nix {{ inherit tag; }};
  gate = builtins.derivation {{
    name = "nixpave-test-gate-{tag}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "i=0; while [ ! -e {gate} ]; do i=$((i+1)); [ $i -gt 600 ] && exit 1; /bin/sleep 0.1; done; echo true > $out" ];
  }};
in {{ deploy = {{ stateDir = "{STATE_DIR}"; confirmTimeout = 4; activationTimeout = 4; nodes = {{
  host1 = {{ hostname = "host1"; profiles.system.path = sys "{tag}-1"; }};
  host2 = {{ hostname = "host2"; profiles.system.path = if import gate then sys "{tag}-2" else null; }};
  host3 = {{ hostname = "host3"; profiles.system.path = throw "host3 is broken on purpose"; }};
}}; }}; }}; }}"#,
            gate = gate.display()
        ),
        &opts,
    );
    let order: std::sync::Mutex<Vec<String>> = Default::default();
    let sink = |e: Event| {
        let seen = match &e {
            Event::Evaluated { done, .. } => format!("evaluated {done}"),
            Event::Finished { report } => {
                if report.host == "host1" {
                    std::fs::write(&gate, "").expect("open the gate");
                }
                format!("finished {}", report.host)
            }
            _ => return,
        };
        order.lock().expect("lock").push(seen);
    };
    let done = nixpave_deploy::pipeline::deploy_listed(
        &listed,
        &|_| {},
        &conn,
        &opts,
        &RolloutSettings::default(),
        &sink,
        &|_, _| {},
    );
    let order = order.into_inner().expect("lock");
    let rows: Vec<(&str, Outcome)> = done
        .report
        .hosts
        .iter()
        .map(|r| (r.host.as_str(), r.outcome))
        .collect();
    assert_eq!(
        rows,
        [
            ("host1", Outcome::Deployed),
            ("host2", Outcome::Deployed),
            ("host3", Outcome::Failed)
        ],
        "{:?} {order:?}",
        done.report.hosts
    );
    let at = |what: &str| order.iter().position(|e| e == what).expect(what);
    assert!(
        at("finished host1") < at("evaluated 2"),
        "host1 waited for host2's evaluation: {order:?}"
    );
    let message = &done.report.hosts[2].message;
    assert!(
        message.contains("evaluating its chunk") && message.contains("broken on purpose"),
        "{message}"
    );
    assert!(done.build_errors.is_empty());
    assert_eq!(done.hosts.len(), 2);
    assert!(profile_of(&lab.hosts()[1]).ends_with(&format!("{tag}-2")));
}

#[test]
fn two_chunks_build_at_once() {
    // Chunks of one node. host1's build (chunk 1) waits until host2's build (chunk 2) has started: it
    // creates a marker as it starts. Built one chunk after the other, host1's build gives up after 60 s
    // and host1 fails; built at once, both deploy. host3's build (chunk 3) fails: it alone fails.
    nix_conf_dir();
    let lab = Lab::up(3).expect("lab up");
    let conn = connector(&lab);
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("chunk2-building");
    let tag = unique("parallel-builds");
    let opts = DeployOptions::default();
    let listed = listed_node_by_node(
        dir.path(),
        &format!(
            r#"{{ outputs = {{ self }}: let sys = import ./system.nix; in {{
  deploy = {{ stateDir = "{STATE_DIR}"; confirmTimeout = 4; activationTimeout = 4; nodes = {{
    host1 = {{ hostname = "host1"; profiles.system.path = sys {{ tag = "{tag}-1"; buildWaitFor = "{marker}"; }}; }};
    host2 = {{ hostname = "host2"; profiles.system.path = sys {{ tag = "{tag}-2"; buildMark = "{marker}"; }}; }};
    host3 = {{ hostname = "host3"; profiles.system.path = sys {{ tag = "{tag}-3"; buildFail = true; }}; }};
}}; }}; }}; }}"#,
            marker = marker.display()
        ),
        &opts,
    );
    let heard: std::sync::Mutex<Vec<(u64, u64)>> = Default::default();
    let events = Events::default();
    let sink = events.sink();
    let done = nixpave_deploy::pipeline::deploy_listed(
        &listed,
        &|_| {},
        &conn,
        &opts,
        &RolloutSettings::default(),
        &sink,
        &|d, e| heard.lock().expect("lock").push((d, e)),
    );
    let rows: Vec<(&str, Outcome)> = done
        .report
        .hosts
        .iter()
        .map(|r| (r.host.as_str(), r.outcome))
        .collect();
    assert_eq!(
        rows,
        [
            ("host1", Outcome::Deployed),
            ("host2", Outcome::Deployed),
            ("host3", Outcome::Failed)
        ],
        "the chunks' builds did not overlap: {:?} {:?}",
        done.report.hosts,
        done.build_errors
    );
    // host3's row and the build's error show what its builder printed (`buildFail`'s line), named.
    let drv3 = format!("-nixpave-test-system-{tag}-3.drv");
    let message = &done.report.hosts[2].message;
    assert!(
        message.contains("building its profile failed")
            && message.contains(&format!("{drv3}' failed with exit code 1"))
            && message.contains(&format!("{drv3}:\n> build failed on purpose")),
        "{message}"
    );
    assert_eq!(done.build_errors.len(), 1, "{:?}", done.build_errors);
    let logs = done.build_errors[0].0.build_logs();
    assert!(
        logs.len() == 1
            && logs[0].drv.ends_with(&drv3)
            && logs[0].lines == ["build failed on purpose"],
        "{logs:?}"
    );
    assert!(
        done.build_errors[0]
            .0
            .to_string()
            .ends_with("\n> build failed on purpose"),
        "{}",
        done.build_errors[0].0
    );
    // The progress heard is the fleet's: the chunks' derivations, counted up across them.
    let heard = heard.into_inner().expect("lock");
    assert!(
        heard.iter().any(|&(d, e)| e >= 2 && d < 2),
        "two chunks counted while building: {heard:?}"
    );
    assert!(
        heard.windows(2).all(|w| w[1].1 >= w[0].1),
        "the fleet's count to build only grows: {heard:?}"
    );
    assert!(profile_of(&lab.hosts()[0]).ends_with(&format!("{tag}-1")));
    assert!(profile_of(&lab.hosts()[1]).ends_with(&format!("{tag}-2")));
}

/// Writes `flake_nix` as the flake of `dir`, with the test system beside it, and lists its nodes for an
/// evaluation of one node at a time (the chunk pipeline's input).
fn listed_node_by_node(
    dir: &std::path::Path,
    flake_nix: &str,
    opts: &DeployOptions,
) -> nixpave_deploy::inventory::Listed {
    std::fs::copy(fixtures().join("system.nix"), dir.join("system.nix")).expect("copy");
    std::fs::write(dir.join("flake.nix"), flake_nix).expect("flake");
    match nixpave_deploy::Inventory::list_flake(
        &format!("path:{}", dir.display()),
        &nixpave_deploy::Selection::default(),
        false,
        1,
        &opts.nix,
    )
    .expect("listed")
    {
        nixpave_deploy::inventory::Listing::Listed(listed) => listed,
        other => panic!("three nodes, one per evaluation, are listed: {other:?}"),
    }
}
