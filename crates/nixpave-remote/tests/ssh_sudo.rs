//! Non-root logins: commands that need root go through sudo, with or without a password (asked
//! once per host, fed on stdin).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nixpave_lab::hosts::LabUser;
use nixpave_lab::testing::{Lab, LabOptions};
use nixpave_remote::{Privilege, SshOptions, SshTransport, Transport, TransportError, UploadSpec};

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn lab_with_users() -> Lab {
    Lab::with(LabOptions {
        hosts: 1,
        users: vec![
            LabUser {
                name: "alice".into(),
                sudo_password: None,
            },
            LabUser {
                name: "bob".into(),
                sudo_password: Some("correct horse".into()),
            },
        ],
        ..LabOptions::default()
    })
    .expect("lab up")
}

/// Puts a small text file into this machine's store (no build needed) and returns its path.
fn add_to_local_store(lab: &Lab, content: &str) -> String {
    let conf = nixpave_testsupport::nix_conf_dir();
    let file = lab.dir().join(format!("{}-{content}", lab.name()));
    std::fs::write(&file, content).expect("write");
    let out = std::process::Command::new("nix-store")
        .arg("--add")
        .arg(&file)
        .env("NIX_CONF_DIR", conf)
        .output()
        .expect("nix-store --add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn passwordless_sudo_runs_commands_uploads_and_nix_as_root() {
    let lab = lab_with_users();
    let host = lab.host(0);
    let ssh = SshTransport::connect(&host.target_as("alice"), host.ssh_options()).expect("alice");
    let out = ssh.run(&argv(&["id", "-un"]), None).expect("id");
    assert_eq!(out.stdout_str().trim(), "root");
    // stdin still reaches the command through sudo.
    let out = ssh
        .run(&argv(&["cat"]), Some(b"through sudo"))
        .expect("cat");
    assert_eq!(out.stdout, b"through sudo");
    ssh.upload(
        b"root only",
        &UploadSpec {
            dest: "/root/secret".into(),
            mode: 0o600,
            owner: Some("root:root".into()),
        },
    )
    .expect("upload into /root");
    assert_eq!(
        ssh.read_file("/root/secret".as_ref()).expect("read"),
        b"root only"
    );
    assert!(
        ssh.ssh_store_uri().contains("remote-program=sudo"),
        "{}",
        ssh.ssh_store_uri()
    );
    // `nix copy` as alice lands in the host's (root-owned) store through sudo.
    let path = add_to_local_store(&lab, "copied-by-alice");
    let copy = std::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
        ])
        .arg(ssh.ssh_store_uri())
        .arg(&path)
        .envs(ssh.nix_env())
        .env("NIX_CONF_DIR", nixpave_testsupport::nix_conf_dir())
        .output()
        .expect("nix copy");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let valid = host
        .run_inside(&["nix-store", "--check-validity", &path])
        .expect("nsenter");
    assert!(valid.status.success());

    // Without escalation the same login stays alice.
    let plain = SshTransport::connect(
        &host.target_as("alice"),
        SshOptions {
            privilege: Privilege::None,
            ..host.ssh_options()
        },
    )
    .expect("alice without sudo");
    let out = plain.run(&argv(&["id", "-un"]), None).expect("id");
    assert_eq!(out.stdout_str().trim(), "alice");
}

#[test]
fn sudo_password_is_asked_once_and_fed_on_stdin() {
    let lab = lab_with_users();
    let host = lab.host(0);
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let options = SshOptions {
        sudo_password: Some(Arc::new(move |name: &str| {
            assert_eq!(name, "host1");
            counter.fetch_add(1, Ordering::SeqCst);
            Some("correct horse".to_string())
        })),
        ..host.ssh_options()
    };
    let ssh = SshTransport::connect(&host.target_as("bob"), options).expect("bob");
    for _ in 0..3 {
        let out = ssh.run(&argv(&["id", "-u"]), None).expect("id");
        assert_eq!(out.stdout_str().trim(), "0", "{}", out.stderr_tail(3));
    }
    let out = ssh.run(&argv(&["cat"]), Some(b"payload")).expect("cat");
    assert_eq!(
        out.stdout, b"payload",
        "the password line is not part of the input"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // No prompt: a clear refusal at connect time.
    let err = SshTransport::connect(&host.target_as("bob"), host.ssh_options()).unwrap_err();
    assert!(err.to_string().contains("--ask-sudo-password"), "{err}");

    // A wrong password is reported as such.
    let wrong = SshOptions {
        sudo_password: Some(Arc::new(|_: &str| Some("wrong".to_string()))),
        ..host.ssh_options()
    };
    let err = SshTransport::connect(&host.target_as("bob"), wrong).unwrap_err();
    assert!(matches!(err, TransportError::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains("refused the password"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password never shows: {err}"
    );
}
