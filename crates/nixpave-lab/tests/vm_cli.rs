//! `nixpave lab vm up/status/console/ssh/down` end to end with the real binary and a real VM.
//! Ignored by default; `scripts/test-vm.sh` runs it (it builds the nixpave binary first).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn nixpave_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NIXPAVE_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/nixpave");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p nixpave`; scripts/test-vm.sh does) or set NIXPAVE_BIN",
        bin.display()
    );
    bin
}

/// Runs nixpave with VM state in `state` (so the test never sees or touches other VMs).
fn nixpave(state: &Path, args: &[&str]) -> Output {
    Command::new(nixpave_binary())
        .args(args)
        .env("NIXPAVE_LAB_VM_DIR", state)
        .stdin(Stdio::null())
        .output()
        .expect("nixpave runs")
}

use nixpave_testsupport::output_text as text;

/// Removes the test's VM (and state directory) even when an assertion fails.
struct Cleanup(PathBuf, &'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = nixpave(&self.0, &["lab", "vm", "down", self.1]);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "boots a qemu VM through the CLI; run by scripts/test-vm.sh"]
fn vm_cli_up_status_console_ssh_down() {
    let state = std::env::temp_dir().join(format!("nixpave-vm-cli-{}", std::process::id()));
    let _cleanup = Cleanup(state.clone(), "cli1");

    let bad = nixpave(&state, &["lab", "vm", "up", "cli1", "--disk-size", "4X"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad size is a usage error: {}",
        text(&bad)
    );

    let up = nixpave(
        &state,
        &[
            "lab",
            "vm",
            "up",
            "cli1",
            "--disks",
            "1",
            "--disk-size",
            "512M",
            "--memory",
            "768M",
            "--json",
        ],
    );
    assert!(up.status.success(), "{}", text(&up));
    let inventory: serde_json::Value =
        serde_json::from_slice(&up.stdout).expect("inventory JSON on stdout");
    let host = &inventory["hosts"][0];
    assert_eq!(host["name"], "cli1");
    assert_eq!(host["host"], "127.0.0.1");
    assert_eq!(host["user"], "root");
    let port = host["port"].as_u64().expect("port");
    assert!(Path::new(host["identity_file"].as_str().unwrap()).is_file());
    assert!(
        std::fs::read_to_string(host["known_hosts"].as_str().unwrap())
            .unwrap()
            .starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 "))
    );

    // The inventory works with plain ssh (strict host-key checking) through the written ssh_config.
    let ssh_config = state.join("cli1/ssh_config");
    let plain = Command::new("ssh")
        .args(["-F"])
        .arg(&ssh_config)
        .args([
            "-o",
            "BatchMode=yes",
            "cli1",
            "lsblk -dno NAME,SIZE /dev/vdb",
        ])
        .output()
        .expect("ssh");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["vdb", "512M"]
    );

    let again = nixpave(&state, &["lab", "vm", "up", "cli1"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a running name is refused: {}",
        text(&again)
    );

    let status = nixpave(&state, &["lab", "vm", "status", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(list[0]["host"], "cli1");
    assert_eq!(list[0]["running"], true);
    assert_eq!(list[0]["ssh_port"].as_u64(), Some(port));

    let console = nixpave(&state, &["lab", "vm", "console", "cli1", "-n", "50"]);
    assert!(
        String::from_utf8_lossy(&console.stdout).contains("sshd up"),
        "{}",
        text(&console)
    );

    let ssh = nixpave(&state, &["lab", "vm", "ssh", "cli1", "--", "hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout).trim(),
        "cli1",
        "{}",
        text(&ssh)
    );
    let failing = nixpave(&state, &["lab", "vm", "ssh", "cli1", "--", "exit 7"]);
    assert_eq!(
        failing.status.code(),
        Some(7),
        "the remote exit status is passed on"
    );

    let pid = list[0]["pid"].as_u64().expect("pid");
    let down = nixpave(&state, &["lab", "vm", "down", "cli1"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(!state.join("cli1").exists());
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!cmdline.contains("qemu"), "qemu stopped");
    let down_again = nixpave(&state, &["lab", "vm", "down", "cli1"]);
    assert!(
        down_again.status.success(),
        "down is idempotent: {}",
        text(&down_again)
    );
}
