//! Deploys across nix versions: the deployer runs the nix first on `PATH` (Debian 12's 2.8 in the normal
//! run; current Nix 2.26 in the second pass of `scripts/test.sh`, which sets `NIXPAVE_TEST_NIX=2.26`), the
//! lab targets run the version each test names. Both passes together cover 2.8 → 2.26, 2.26 → 2.8 (mixed)
//! and 2.26 → 2.26 (and 2.8 → 2.8), and one fleet deploy reaches a 2.8 and a 2.26 target at once.
//!
//! Every test builds from a `.drv` on the deployer (`nix build` with the version's installable syntax),
//! pushes with `nix copy` (the deployer's client against the target's `nix-store --serve`), switches and
//! rolls back with the target's `nix-env`, and builds on the target from copied derivations.
//!
//! The targets' current Nix comes from `scripts/nix-current.sh`; a test that needs it fails (it does not
//! skip) when it is not provided.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nixpave_deploy::{
    build_all, deploy_fleet, deploy_host, rollback_host, DeployOptions, Goal, Host, Outcome,
    RolloutSettings, SshConnector,
};
use nixpave_lab::testing::{expected_local_nix, Lab, LabHost, LabNix, LabOptions};
use nixpave_nix::NixVersion;
use nixpave_remote::{InventoryHost, SshOptions, Transport};

const STATE_DIR: &str = "/nix/var/nixpave/deploy";
const PROFILE: &str = "/nix/var/nix/profiles/system";

/// `nix --version` of the deployer; checked against `NIXPAVE_TEST_NIX` so a pass meant for 2.26 cannot
/// quietly run 2.8.
fn deployer_nix() -> String {
    let out = Command::new("nix")
        .arg("--version")
        .output()
        .expect("nix --version");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if let Some(expected) = expected_local_nix() {
        assert!(
            version.contains(&format!(" {expected}.")),
            "NIXPAVE_TEST_NIX={expected} but the deployer's nix is `{version}`"
        );
    }
    version
}

/// A fixture system as a derivation (not built): `(drv, out)`.
fn instantiate(tag: &str) -> (String, String) {
    let (drv, out) =
        nixpave_testsupport::nix_instantiate(&fixtures().join("system.nix"), &[("tag", tag)]);
    assert!(
        drv.ends_with(".drv") && out.starts_with("/nix/store/"),
        "{drv} {out}"
    );
    (drv, out)
}

/// One node per lab host, profile `system` from the derivation `(drv, out)`.
fn hosts(lab: &Lab, (drv, out): &(String, String)) -> Vec<Host> {
    let mut nodes = serde_json::Map::new();
    for h in lab.hosts() {
        nodes.insert(
            h.name().to_string(),
            serde_json::json!({
                "hostname": h.name(), "stateDir": STATE_DIR, "confirmTimeout": 4, "activationTimeout": 4,
                "profiles": { "system": { "path": { "drv": drv, "out": out } } }
            }),
        );
    }
    inventory(serde_json::Value::Object(nodes)).hosts
}

/// Runs `script` with `sh -c` over ssh (so with the PATH, hence the nix, that deploys see there).
fn on_host(h: &LabHost, script: &str) -> String {
    let out = h
        .connect()
        .expect("ssh")
        .run(&["sh".into(), "-c".into(), script.into()], None)
        .expect("runs");
    assert!(
        out.success(),
        "`{script}` on {}: {}",
        h.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn valid_here(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .output()
        .expect("nix-store")
        .status
        .success()
}

/// Build here, deploy two generations to two hosts, roll one back by hand, then build on a target.
/// `wanted` says which target versions the test is about.
fn deploy_round_trip(targets: LabNix, wanted: fn(NixVersion) -> bool, about: &str) {
    let deployer = deployer_nix();
    let lab = Lab::with(LabOptions {
        hosts: 2,
        nix: targets,
        ..LabOptions::default()
    })
    .expect("lab up");
    for h in lab.hosts() {
        let v = h.nix_version().expect("nix --version on the host");
        assert!(
            NixVersion::parse(&v).is_some_and(wanted),
            "{} runs `{v}`, wanted {about}",
            h.name()
        );
    }
    eprintln!("deployer: {deployer}; targets: {about}");
    let conn = connector(&lab);
    let events = Events::default();
    let sink = events.sink();
    let opts = DeployOptions::default();

    // Generation 1, then 2: built here from derivations, pushed with `nix copy`.
    let mut generations = Vec::new();
    for n in 1..=2 {
        let sys = instantiate(&unique(&format!("nixver{n}")));
        let hs = hosts(&lab, &sys);
        assert_eq!(build_all(&hs, &opts).expect("nix build"), 1);
        assert!(valid_here(&sys.1), "{} was not built here", sys.1);
        let report = deploy_fleet(&hs, &conn, &opts, &RolloutSettings::default(), &sink);
        for r in &report.hosts {
            assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
        }
        for h in lab.hosts() {
            assert_eq!(on_host(h, &format!("readlink -f {PROFILE}")), sys.1);
        }
        generations.push((hs, sys));
    }
    // The target's nix-env lists both generations and switches back to the first.
    let h1 = lab.host(0);
    let listed = on_host(h1, &format!("nix-env -p {PROFILE} --list-generations"));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let back = rollback_host(&generations[1].0[0], &conn, Goal::Switch, &sink, 0);
    assert_eq!(back.outcome, Outcome::RolledBack, "{back:?}");
    assert_eq!(
        on_host(h1, &format!("readlink -f {PROFILE}")),
        generations[0].1 .1
    );
    assert!(
        on_host(h1, &format!("nix-env -p {PROFILE} --list-generations"))
            .lines()
            .any(|l| l.contains("(current)") && l.trim_start().starts_with('1')),
        "generation 1 is not current after the rollback"
    );

    // Build on the target: derivations copied (`nix copy --derivation`), realised by the target's nix.
    let sys = instantiate(&unique("nixver-remote"));
    let host = hosts(&lab, &sys).remove(1);
    let remote = DeployOptions {
        build_on_target: true,
        ..DeployOptions::default()
    };
    let report = deploy_host(&host, &conn, &remote, &sink, 1);
    assert_eq!(report.outcome, Outcome::Deployed, "{report:?}");
    assert_eq!(
        on_host(lab.host(1), &format!("readlink -f {PROFILE}")),
        sys.1
    );
    assert!(!valid_here(&sys.1), "{} was built here", sys.1);
}

#[test]
fn deploys_to_targets_running_current_nix() {
    // Current: a nix where a bare .drv no longer means its outputs (2.15+), e.g. Debian trixie's 2.26.
    deploy_round_trip(
        LabNix::Current,
        |v| v >= NixVersion::new(2, 15, 0),
        "current nix (2.15+)",
    );
}

#[test]
fn deploys_to_targets_running_debian_nix() {
    deploy_round_trip(LabNix::Debian, |v| v.minor == 8, "Debian 12's nix 2.8");
}

#[test]
fn one_fleet_deploy_reaches_targets_of_both_versions() {
    deployer_nix();
    let old = Lab::with(LabOptions {
        nix: LabNix::Debian,
        ..LabOptions::default()
    })
    .expect("lab up (nix 2.8)");
    let new = Lab::with(LabOptions {
        nix: LabNix::Current,
        ..LabOptions::default()
    })
    .expect("lab up (current nix)");
    let targets = [("old", old.host(0)), ("new", new.host(0))];
    let versions: Vec<NixVersion> = targets
        .iter()
        .map(|(_, h)| NixVersion::parse(&h.nix_version().expect("nix --version")).expect("version"))
        .collect();
    assert!(
        versions[0].minor == 8 && versions[1] >= NixVersion::new(2, 15, 0),
        "{versions:?}"
    );
    // Each lab has its own key and known_hosts: one inventory entry per target, named by role. The base
    // options are what the command line would give: no key or known_hosts of their own (those would win).
    let conn = SshConnector::new(
        SshOptions {
            connect_timeout: Duration::from_secs(5),
            identity_file: None,
            known_hosts: None,
            ..old.host(0).ssh_options()
        },
        targets
            .iter()
            .map(|(name, h)| InventoryHost {
                name: name.to_string(),
                host: h.address().to_string(),
                port: h.target().port,
                user: Some("root".into()),
                identity_file: Some(h.identity_file().to_path_buf()),
                known_hosts: Some(h.known_hosts().to_path_buf()),
            })
            .collect(),
    );
    let (drv, out) = instantiate(&unique("nixver-fleet"));
    let mut nodes = serde_json::Map::new();
    for (name, _) in &targets {
        nodes.insert(
            name.to_string(),
            serde_json::json!({
                "hostname": name, "stateDir": STATE_DIR, "confirmTimeout": 4, "activationTimeout": 4,
                "profiles": { "system": { "path": { "drv": drv, "out": out } } }
            }),
        );
    }
    let hs = inventory(serde_json::Value::Object(nodes)).hosts;
    let opts = DeployOptions::default();
    assert_eq!(build_all(&hs, &opts).expect("one nix build"), 1);
    let events = Events::default();
    let report = deploy_fleet(
        &hs,
        &conn,
        &opts,
        &RolloutSettings::default(),
        &events.sink(),
    );
    for r in &report.hosts {
        assert_eq!(r.outcome, Outcome::Deployed, "{r:?}");
    }
    for (name, h) in &targets {
        assert_eq!(on_host(h, &format!("readlink -f {PROFILE}")), out, "{name}");
    }
}
