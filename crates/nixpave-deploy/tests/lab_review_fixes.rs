//! Deploy behaviour found in review, proven on lab hosts (real sshd, real nix): health checks without magic
//! rollback, keys re-uploaded on a no-op, a later profile's failure reverting the earlier profiles, and a
//! non-root login whose sudo wants a password (deploy-rs `interactiveSudo`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use nixpave_deploy::{deploy_host, DeployOptions, Host, HostReport, Outcome, SshConnector};
use nixpave_lab::hosts::LabUser;
use nixpave_lab::testing::{Lab, LabHost, LabOptions};

const STATE_DIR: &str = "/nix/var/nixpave/deploy";

/// The node of lab host `h` with the given extra node fields (profiles included).
fn host(h: &LabHost, node: serde_json::Value) -> Host {
    let mut n = serde_json::json!({
        "hostname": h.name(),
        "stateDir": STATE_DIR,
        "confirmTimeout": 4,
        "activationTimeout": 6,
    });
    if let (Some(n), Some(extra)) = (n.as_object_mut(), node.as_object()) {
        n.extend(extra.clone());
    }
    inventory(serde_json::json!({ h.name(): n }))
        .hosts
        .remove(0)
}

fn deploy(host: &Host, conn: &SshConnector) -> HostReport {
    let events = Events::default();
    let sink = events.sink();
    deploy_host(host, conn, &DeployOptions::default(), &sink, 0)
}

fn failing_check() -> serde_json::Value {
    serde_json::json!([{ "type": "command", "command": "test -e /nix/var/nixpave-test/healthy",
                         "retries": 1, "timeout": 2 }])
}

#[test]
fn health_checks_run_without_magic_rollback() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let v1 = build_system(&[("tag", &unique("hc1"))]);
    let v2 = build_system(&[("tag", &unique("hc2"))]);
    let v3 = build_system(&[("tag", &unique("hc3"))]);
    let node = |path: &str, auto: bool| {
        serde_json::json!({ "magicRollback": false, "autoRollback": auto,
            "healthChecks": failing_check(), "profiles": { "system": { "path": path } } })
    };
    h.sh("mkdir -p /nix/var/nixpave-test && touch /nix/var/nixpave-test/healthy");
    let r = deploy(&host(h, node(&v1, true)), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");

    // The check fails: with auto rollback the host goes back to v1 even though magic rollback is off.
    h.sh("rm -f /nix/var/nixpave-test/healthy");
    let r = deploy(&host(h, node(&v2, true)), &conn);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.message.contains("health check failed"), "{r:?}");
    assert_eq!(h.sh("readlink -f /nix/var/nix/profiles/system"), v1);

    // With auto rollback off too, the failure is reported and the new generation stays.
    let r = deploy(&host(h, node(&v3, false)), &conn);
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(r.message.contains("health check failed"), "{r:?}");
    assert_eq!(h.sh("readlink -f /nix/var/nix/profiles/system"), v3);
}

#[test]
fn keys_that_changed_are_uploaded_on_a_no_op() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let sys = build_system(&[("tag", &unique("keys"))]);
    let node = |text: &str, perm: &str| {
        serde_json::json!({ "profiles": { "system": { "path": sys } },
            "keys": { "token": { "text": text, "destDir": "/tmp/np-keys", "permissions": perm } } })
    };
    let r = deploy(&host(h, node("one", "0600")), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
    let logins = h.accepted_logins();

    // Same system, same key: nothing uploaded.
    let r = deploy(&host(h, node("one", "0600")), &conn);
    assert_eq!(r.outcome, Outcome::Unchanged, "{r:?}");
    assert!(!r.message.contains("key"), "{r:?}");
    assert_eq!(h.accepted_logins() - logins, 1, "one login for a no-op");

    // The key was lost (e.g. /run/keys after a reboot), then its contents and its mode change.
    h.sh("rm -f /tmp/np-keys/token");
    let r = deploy(&host(h, node("one", "0600")), &conn);
    assert_eq!(r.outcome, Outcome::Unchanged, "{r:?}");
    assert!(r.message.contains("token"), "{r:?}");
    assert_eq!(h.sh("cat /tmp/np-keys/token"), "one");
    let r = deploy(&host(h, node("two", "0600")), &conn);
    assert!(r.message.contains("token"), "{r:?}");
    assert_eq!(h.sh("cat /tmp/np-keys/token"), "two");
    let r = deploy(&host(h, node("two", "0640")), &conn);
    assert!(r.message.contains("token"), "{r:?}");
    assert_eq!(h.sh("stat -c %a /tmp/np-keys/token"), "640");
}

#[test]
fn a_later_profile_failing_reverts_the_earlier_profiles_of_the_node() {
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let conn = connector(&lab);
    let app = |tag: &str| build_system(&[("tag", tag), ("kind", "activate")]);
    let (sys1, app1) = (
        build_system(&[("tag", &unique("p-sys1"))]),
        app(&unique("p-app1")),
    );
    let (sys2, app2) = (
        build_system(&[("tag", &unique("p-sys2"))]),
        build_system(&[
            ("tag", &unique("p-app2")),
            ("kind", "activate"),
            ("fail", "true"),
        ]),
    );
    let node = |sys: &str, app: &str| {
        serde_json::json!({ "profilesOrder": ["system", "app"],
            "profiles": { "system": { "path": sys }, "app": { "path": app } } })
    };
    let r = deploy(&host(h, node(&sys1, &app1)), &conn);
    assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");

    let r = deploy(&host(h, node(&sys2, &app2)), &conn);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(
        r.message.contains("earlier profiles reverted: system"),
        "{r:?}"
    );
    assert_eq!(h.sh("readlink -f /nix/var/nix/profiles/system"), sys1);
    assert_eq!(
        h.sh("readlink -f /nix/var/nix/profiles/per-user/root/app"),
        app1
    );
    // The earlier profile's old system was activated again, after the new one.
    let activations = h.sh("cat /nix/var/nixpave-test/activations");
    let last = activations.lines().last().unwrap_or_default();
    assert!(last.starts_with("p-sys1"), "{activations}");
}

#[test]
fn interactive_sudo_asks_once_and_feeds_the_password_on_stdin() {
    let lab = Lab::with(LabOptions {
        hosts: 2,
        users: vec![LabUser {
            name: "deployer".into(),
            sudo_password: Some("s3cret-pw".into()),
        }],
        ..LabOptions::default()
    })
    .expect("lab up");
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    // The CLI's prompt asks the terminal once and answers every host; here the answer is fixed.
    let conn = connector(&lab).with_sudo_prompt(Arc::new(move |_host: &str| {
        counter.fetch_add(1, Ordering::SeqCst);
        Some("s3cret-pw".to_string())
    }));
    let sys = build_system(&[("tag", &unique("sudo"))]);
    // As on a real multi-user install (and as deploy-rs needs too), the login user pushes through the nix
    // daemon as a trusted user; only the activation needs root.
    for h in lab.hosts() {
        start_nix_daemon(h, "deployer");
    }
    for h in lab.hosts() {
        let node = serde_json::json!({ "sshUser": "deployer", "user": "root", "interactiveSudo": true,
            "profiles": { "system": { "path": sys } } });
        let r = deploy(&host(h, node), &conn);
        assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
        assert_eq!(h.sh("readlink -f /nix/var/nix/profiles/system"), sys);
        assert!(
            h.sshd_log().contains("for deployer from"),
            "{}",
            h.sshd_log()
        );
    }
    assert!(asked.load(Ordering::SeqCst) >= 1);
    // Without interactiveSudo, a password-protected sudo is refused at connect time with a message.
    let h = lab.host(0);
    let node =
        serde_json::json!({ "sshUser": "deployer", "profiles": { "system": { "path": sys } } });
    let r = deploy(&host(h, node), &conn);
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(r.message.contains("sudo"), "{r:?}");
}

/// Runs a nix daemon on the lab host (a multi-user nix install) that trusts `user`.
fn start_nix_daemon(h: &LabHost, user: &str) {
    let conf_dir = h.state().root.join("etc-nix");
    let conf = conf_dir.join("nix.conf");
    let mut text = std::fs::read_to_string(&conf).expect("nix.conf");
    text.push_str(&format!("trusted-users = root {user}\n"));
    std::fs::write(&conf, text).expect("nix.conf");
    let out = h
        .run_inside(&[
            "sh",
            "-c",
            &format!(
                "NIX_CONF_DIR={} setsid nix-daemon </dev/null >/dev/null 2>&1 & \
                 for i in $(seq 50); do [ -S /nix/var/nix/daemon-socket/socket ] && exit 0; sleep 0.1; done; exit 1",
                conf_dir.display()
            ),
        ])
        .expect("nsenter");
    assert!(out.status.success(), "nix-daemon did not start");
}
