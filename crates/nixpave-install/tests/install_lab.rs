//! Against a real lab host (sshd in a network namespace): a changed host key ends the verify wait at
//! once, typed, instead of after the 600 s the wait allows.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Recorder;
use nixpave_install::phase::{Phase, PhaseSet};
use nixpave_install::run::{Installer, NodeSpec, Timeouts};
use nixpave_install::state::StateStore;
use nixpave_install::{install_node, InstallError, PhaseError};
use nixpave_lab::testing::Lab;
use nixpave_remote::SshConnection;
use nixpave_remote::SshTransport;

#[test]
fn a_changed_host_key_fails_verify_at_once() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    // Our own known_hosts: the host's real key for the connection, then a different key in its place.
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::copy(host.known_hosts(), &known_hosts).unwrap();
    let options = nixpave_remote::SshOptions {
        known_hosts: Some(known_hosts.clone()),
        ..host.ssh_options()
    };
    let ssh = SshTransport::connect(&host.target(), options).expect("ssh to the lab host");
    let other = dir.path().join("other");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(keygen.success());
    let pattern = format!("[{}]:{}", host.address(), host.target().port.unwrap_or(22));
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    std::fs::write(&known_hosts, format!("{pattern} {}\n", key.join(" "))).unwrap();

    let spec = NodeSpec {
        node: "lab1".into(),
        session: Box::new(SshConnection::new(ssh)),
        toplevel: "/nix/store/00000000000000000000000000000000-nixpave-test-system".into(),
        arch: std::env::consts::ARCH.into(),
        phases: PhaseSet::parse("verify").unwrap(),
        resume: false,
        kexec: None,
        disk: None,
        root: PathBuf::from("/mnt"),
        extra_files: None,
        chown: Vec::new(),
        copy_host_keys: true,
        substitute_on_destination: false,
        substituters: Default::default(),
        build_on_target: None,
        force_kexec: false,
        nix_args: Vec::new(),
        timeouts: Timeouts {
            verify_up: Duration::from_secs(600),
            ..Timeouts::default()
        },
        ram: Default::default(),
    };
    let rec = Recorder::default();
    let inst = Installer {
        state: StateStore::new(dir.path().join("state")),
        reporter: &rec,
        disk_engine: &nixpave_install::disk::SequentialEngine,
        confirm: &|_, _| true,
    };
    let started = Instant::now();
    let err = install_node(&spec, &inst).expect_err("a changed host key must fail");
    let took = started.elapsed();
    match &err {
        InstallError::Phase { phase, error, .. } => {
            assert_eq!(*phase, Phase::Verify);
            assert!(
                matches!(**error, PhaseError::HostKeyRefused(_)) && error.is_host_key_refusal(),
                "{err}"
            );
        }
        other => panic!("expected a verify failure, got {other}"),
    }
    assert!(took < Duration::from_secs(60), "took {took:?}: {err}");
    assert_eq!(err.kind(), nixpave_install::FailureKind::Refused, "exit 3");
}
