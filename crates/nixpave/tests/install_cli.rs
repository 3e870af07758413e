//! `nixpave install` against real lab hosts (netns + sshd, sharing this machine's kernel): preflight refuses
//! before anything is written. A lab host must never be kexec'd or rebooted — it would be this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nixpave_lab::hosts::Flavour;
use nixpave_lab::testing::{Lab, LabHost, LabOptions};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tarball in nixos-images format whose `kexec/run` would leave a trace if it ever ran.
fn tarball(dir: &Path) -> PathBuf {
    let k = dir.join("src/kexec");
    std::fs::create_dir_all(&k).expect("mkdir");
    std::fs::write(
        k.join("run"),
        "#!/bin/sh\ntouch /tmp/nixpave-kexec-run-ran\nexit 1\n",
    )
    .expect("run");
    std::fs::write(k.join("bzImage"), [0u8; 512]).expect("bzImage");
    std::fs::write(k.join("initrd"), [0u8; 512]).expect("initrd");
    let tar = dir.join("installer.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.join("src"))
        .arg("kexec")
        .status()
        .expect("tar");
    assert!(ok.success());
    tar
}

fn install(host: &LabHost, work: &Path, phases: &str) -> Output {
    let target = host.target();
    Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(["install", "node1", "--system"])
        .arg("/nix/store/00000000000000000000000000000000-nixpave-test-system")
        .arg("--target")
        .arg(format!(
            "root@{}:{}",
            target.host,
            target.port.unwrap_or(22)
        ))
        .arg("-i")
        .arg(host.identity_file())
        .arg("--known-hosts")
        .arg(host.known_hosts())
        .arg("--kexec")
        .arg(tarball(work))
        .arg("--disk-config")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../nixpave-install/tests/fixtures/layout-root.nix"),
        )
        .args(["--phases", phases, "--yes-wipe-all-disks", "--state-dir"])
        .arg(work.join("state"))
        .stdin(Stdio::null())
        .output()
        .expect("nixpave runs")
}

fn inside(host: &LabHost, script: &str) -> String {
    let out = host.run_inside(&["sh", "-c", script]).expect("run inside");
    text(&out.stdout).trim().to_string()
}

#[test]
fn install_on_a_lab_host_is_refused_in_preflight_listing_what_is_missing() {
    let lab = Lab::with(LabOptions {
        hosts: 1,
        flavour: Flavour::Nixos,
        ..LabOptions::default()
    })
    .expect("lab up");
    let host = lab.host(0);
    // The host's tools live in /run/current-system/sw/bin (its own /run): take cpio away.
    assert_eq!(
        inside(
            host,
            "rm /run/current-system/sw/bin/cpio && command -v cpio >/dev/null || echo gone"
        ),
        "gone"
    );
    let clean = "ls -d /root/nixpave-kexec /tmp/nixpave-kexec-run-ran 2>/dev/null | wc -l";
    assert_eq!(inside(host, clean), "0", "left over from an earlier run");
    let work = tempfile::tempdir().expect("tempdir");

    let out = install(host, work.path(), "kexec,disk,install,reboot,verify");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("shares its kernel") && stderr.contains("lab host"),
        "{stderr}"
    );
    assert!(stderr.contains("lacks cpio "), "{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    // Nothing was written: no state file here, no upload and no kexec/run there.
    assert!(!work.path().join("state").join("node1.json").exists());
    assert!(
        std::fs::read_dir(work.path().join("state"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    assert_eq!(inside(host, clean), "0");

    // Reboot alone is refused as well (an installed lab host would reboot this machine).
    let out = install(host, work.path(), "reboot,verify");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("shares its kernel"), "{stderr}");
    assert!(
        !stderr.contains("lacks"),
        "tools only matter for kexec: {stderr}"
    );
    assert_eq!(inside(host, clean), "0");
}
