//! Instant undo of obvious lockouts: right after activation the agent checks that the deployer's way in still
//! works (route and interface, the address it came in on, sshd listening, `sshd -t`) and rolls back at once
//! when it does not, instead of waiting out the confirm timeout. Real lab hosts, real sshd, real nix.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nixpave_deploy::{deploy_host, DeployOptions, Host, HostReport, Outcome, SshConnector};
use nixpave_lab::testing::{Lab, LabHost};

const STATE_DIR: &str = "/nix/var/nixpave/deploy";
/// Long enough that a rollback by confirm timeout could not pass for an instant one.
const CONFIRM: u64 = 40;

fn host(h: &LabHost, path: &str) -> Host {
    inventory(serde_json::json!({ h.name(): {
        "hostname": h.name(), "stateDir": STATE_DIR, "confirmTimeout": CONFIRM, "activationTimeout": 10,
        "profiles": { "system": { "path": path } } } }))
    .hosts
    .remove(0)
}

fn deploy(h: &Host, conn: &SshConnector) -> HostReport {
    let events = Events::default();
    let sink = events.sink();
    deploy_host(h, conn, &DeployOptions::default(), &sink, 0)
}

/// The agent's record of the last deploy: (state, reason, updated - started in seconds).
fn record(h: &LabHost) -> (String, String, u64) {
    let text = h.sh(&format!("cat {STATE_DIR}/system.json"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("status record");
    (
        v["state"].as_str().unwrap_or_default().into(),
        v["reason"].as_str().unwrap_or_default().into(),
        v["updated"].as_u64().unwrap_or(0) - v["started"].as_u64().unwrap_or(0),
    )
}

#[test]
fn a_link_going_down_rolls_back_within_three_seconds() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let iface = h.interface();
    let good = build_system(&[("tag", &unique("lock-ok")), ("netUp", &iface)]);
    let r = deploy(&host(h, &good), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");

    let bad = build_system(&[("tag", &unique("lock-down")), ("netDown", &iface)]);
    let started = Instant::now();
    let r = deploy(&host(h, &bad), &conn);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.message.contains("could no longer be reached"), "{r:?}");
    let (state, reason, took) = record(h);
    assert_eq!(state, "rolled-back");
    assert_eq!(reason, "lockout-route");
    // From the agent's start (activation included) to the previous generation being active again.
    assert!(took <= 3, "the host took {took} s to roll back");
    assert!(
        started.elapsed() < Duration::from_secs(CONFIRM),
        "waited for the confirm timeout"
    );
    assert_eq!(h.sh("readlink -f /nix/var/nix/profiles/system"), good);
    assert!(h
        .sh(&format!("cat {STATE_DIR}/system.log"))
        .contains("lockout after activation"));
}

#[test]
fn a_configuration_sshd_rejects_rolls_back_at_once() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let good = build_system(&[("tag", &unique("sshd-ok"))]);
    let r = deploy(&host(h, &good), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");

    let bad = build_system(&[("tag", &unique("sshd-bad")), ("breakSshd", "true")]);
    let started = Instant::now();
    let r = deploy(&host(h, &bad), &conn);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    let (state, reason, took) = record(h);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("rolled-back", "lockout-sshd-config")
    );
    assert!(took <= 3, "the host took {took} s to roll back");
    assert!(started.elapsed() < Duration::from_secs(CONFIRM));
    // The previous generation put the configuration back.
    assert!(!h
        .sh("cat /etc/ssh/sshd_config")
        .contains("nixpave-test-broken"));
    assert!(h.sh("sshd -t && echo ok").ends_with("ok"));

    // What was already broken before the activation is not a lockout of this deploy.
    h.sh("echo 'AlreadyBroken yes' >> /etc/ssh/sshd_config");
    let other = build_system(&[("tag", &unique("sshd-pre"))]);
    let r = deploy(&host(h, &other), &conn);
    h.sh("sed -i '/AlreadyBroken/d' /etc/ssh/sshd_config");
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
}
