//! Instant undo of obvious lockouts: right after activation the agent checks that the deployer's way in still
//! works (route and interface, the address it came in on, sshd listening, `sshd -t`) and rolls back at once
//! when it does not, instead of waiting out the confirm timeout. Real lab hosts, real sshd, real nix.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nixpave_deploy::{deploy_host, DeployOptions, Host, HostReport, Outcome, SshConnector};
use nixpave_lab::testing::{Lab, LabHost};
use nixpave_remote::{SshOptions, SshTransport, Transport};

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

/// What an instant undo shows: rolled back for `reason` within 3 s of the agent's start (activation
/// included), the deploy (begun at `started`) over long before the confirm timeout, the previous
/// generation `good` active again, and the agent's log saying why.
fn assert_undone_at_once(h: &LabHost, r: &HostReport, started: Instant, reason: &str, good: &str) {
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.message.contains("could no longer be reached"), "{r:?}");
    let (state, why, took) = record(h);
    assert_eq!(
        (state.as_str(), why.as_str()),
        ("rolled-back", reason),
        "{r:?}"
    );
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
    assert_undone_at_once(h, &r, started, "lockout-route", &good);
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
    assert_undone_at_once(h, &r, started, "lockout-sshd-config", &good);
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

#[test]
fn stopping_sshd_rolls_back_at_once() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let good = build_system(&[("tag", &unique("sshd-up"))]);
    let r = deploy(&host(h, &good), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");

    // A real system lives on without sshd; a lab host's mounts only while one of its processes does.
    // This one stays whatever becomes of the deployer's connections, so the test can still look inside.
    h.sh("setsid sleep 600 </dev/null >/dev/null 2>&1 &");
    // The activation kills the listener, as `systemctl stop sshd` does (KillMode=process on NixOS): open
    // connections live on, so the deployer still hears the agent over its own.
    let sshd = h.state().sshd_pid.expect("sshd pid");
    let bad = build_system(&[
        ("tag", &unique("sshd-stop")),
        ("killPid", &sshd.to_string()),
    ]);
    let started = Instant::now();
    let r = deploy(&host(h, &bad), &conn);
    assert_undone_at_once(h, &r, started, "lockout-sshd", &good);
    // sshd really is gone (the previous generation cannot start it again): new connections are refused.
    assert_eq!(
        // Gone, or a zombie this machine's init has yet to reap.
        h.sh(&format!(
            "case $(ps -o stat= -p {sshd}) in ''|Z*) echo gone ;; esac"
        )),
        "gone"
    );
    let addr = format!("{}:{}", h.address(), h.target().port.unwrap_or(22));
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

/// An address in the lab's root namespace, removed again on drop (the bridge takes it along at lab down
/// anyway).
struct BridgeAddress {
    bridge: String,
    address: String,
}

impl BridgeAddress {
    fn add(bridge: &str, address: &str) -> BridgeAddress {
        let out = std::process::Command::new("ip")
            .args(["addr", "add", &format!("{address}/32"), "dev", bridge])
            .output()
            .expect("ip addr add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        BridgeAddress {
            bridge: bridge.into(),
            address: address.into(),
        }
    }
}

impl Drop for BridgeAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "addr",
                "del",
                &format!("{}/32", self.address),
                "dev",
                &self.bridge,
            ])
            .output();
    }
}

#[test]
fn dropping_the_default_route_rolls_back_at_once() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    // The deployer comes in from off the hosts' subnet (as from across the internet), so only the default
    // route leads back to it: an address outside 10.77.0.0/16 on the lab's bridge, unique per lab, which
    // ssh binds; the host's default route goes through the bridge.
    let subnet = lab.state().subnet;
    let gateway = format!("10.77.{subnet}.1");
    let outside = format!("10.78.{subnet}.1");
    let _outside = BridgeAddress::add(lab.state().bridge.as_deref().expect("bridge"), &outside);
    h.sh(&format!("ip route add default via {gateway}"));
    let bind = format!("BindAddress={outside}");
    let conn = connector_with(&lab, &[&bind]);
    let good = build_system(&[("tag", &unique("route-ok")), ("defaultVia", &gateway)]);
    let r = deploy(&host(h, &good), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
    assert!(
        h.sshd_log().contains(&format!("from {outside} port")),
        "the deployer did not come in from {outside}"
    );

    let bad = build_system(&[("tag", &unique("route-drop")), ("dropDefaultRoute", "true")]);
    let started = Instant::now();
    let r = deploy(&host(h, &bad), &conn);
    assert_undone_at_once(h, &r, started, "lockout-route", &good);
    // The previous generation put the route back: a fresh connection from outside gets in.
    let fresh = SshTransport::connect(
        &h.target(),
        SshOptions {
            extra_options: vec![bind],
            ..h.ssh_options()
        },
    )
    .expect("ssh from outside after the rollback");
    let out = fresh
        .run(
            &["sh".into(), "-c".into(), "echo $SSH_CONNECTION".into()],
            None,
        )
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("{outside} ")),
        "{out:?}"
    );
}
