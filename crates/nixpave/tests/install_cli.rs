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
        host.sh("rm /run/current-system/sw/bin/cpio && command -v cpio >/dev/null || echo gone"),
        "gone"
    );
    let clean = "ls -d /root/nixpave-kexec /tmp/nixpave-kexec-run-ran 2>/dev/null | wc -l";
    assert_eq!(host.sh(clean), "0", "left over from an earlier run");
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
    assert_eq!(host.sh(clean), "0");

    // Reboot alone is refused as well (an installed lab host would reboot this machine).
    let out = install(host, work.path(), "reboot,verify");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("shares its kernel"), "{stderr}");
    assert!(
        !stderr.contains("lacks"),
        "tools only matter for kexec: {stderr}"
    );
    assert_eq!(host.sh(clean), "0");
}

/// An `askPassword` LUKS layout (disko's default): the passphrase is asked before anything runs.
const ASK_PASSWORD_LAYOUT: &str = r#"{"disk": {"main": {"type": "disk", "device": "/dev/vda", "content": {
  "type": "gpt", "partitions": {
    "boot": {"size": "1M", "type": "EF02"},
    "root": {"size": "100%", "content": {"type": "luks", "name": "cryptroot", "askPassword": true,
      "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}}}"#;

/// What `nixpave install` showed on its terminal, and how it ended.
struct TtyRun {
    shown: String,
    code: Option<i32>,
    argv_leaks: Vec<String>,
}

/// Runs `nixpave install --dry-run` for an askPassword layout on a pseudo-terminal (util-linux `script`) and
/// types each answer only once its prompt is on the screen (typed earlier, the terminal would echo it
/// before nixpave turns echo off). Meanwhile every process's argv is watched for `secret`.
fn install_on_tty(host: &LabHost, work: &Path, answers: &[&str], secret: &str) -> TtyRun {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let layout = work.join("ask.json");
    std::fs::write(&layout, ASK_PASSWORD_LAYOUT).expect("layout");
    let target = host.target();
    let words: Vec<String> = vec![
        env!("CARGO_BIN_EXE_nixpave").into(),
        "install".into(),
        "node1".into(),
        "--system".into(),
        "/nix/store/00000000000000000000000000000000-nixpave-test-system".into(),
        "--target".into(),
        format!("root@{}:{}", target.host, target.port.unwrap_or(22)),
        "-i".into(),
        host.identity_file().display().to_string(),
        "--known-hosts".into(),
        host.known_hosts().display().to_string(),
        "--kexec".into(),
        tarball(work).display().to_string(),
        "--disk-config".into(),
        layout.display().to_string(),
        "--dry-run".into(),
        "--state-dir".into(),
        work.join("state").display().to_string(),
    ];
    let mut child = Command::new("script")
        .args(["-qec", &nixpave_remote::shell_join(&words), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let shown = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let shown = shown.clone();
        let mut out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, secret) = (done.clone(), secret.to_string());
        std::thread::spawn(move || {
            let mut leaks = Vec::new();
            while !done.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if let Ok(argv) = std::fs::read(entry.path().join("cmdline")) {
                        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                        if argv.contains(&secret) {
                            leaks.push(argv);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            leaks
        })
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let prompts = [
        "Passphrase for cryptroot: ",
        "Repeat the passphrase for cryptroot: ",
    ];
    for (i, answer) in answers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let so_far = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
            if so_far.matches(prompts[i]).count() >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no prompt `{}` within 60 s:\n{so_far}",
                prompts[i]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Echo goes off right after the prompt is written: give stty its moment.
        std::thread::sleep(Duration::from_millis(300));
        stdin
            .write_all(format!("{answer}\n").as_bytes())
            .expect("type");
        stdin.flush().expect("flush");
    }
    let status = child.wait().expect("script ends");
    drop(stdin);
    reader.join().expect("reader");
    done.store(true, Ordering::SeqCst);
    let argv_leaks = watcher.join().expect("watcher");
    let shown = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    TtyRun {
        shown,
        code: status.code(),
        argv_leaks,
    }
}

/// The CLI's passphrase prompt for an askPassword LUKS layout, on a real terminal: hidden, asked twice, a
/// mismatch refused (exit 2) before anything connects further; the passphrase is never echoed, never in
/// any process's argv, never in what nixpave prints. (The dry run then stops in preflight: a lab host.)
#[test]
fn ask_password_layout_prompts_hidden_twice_on_the_terminal() {
    let lab = Lab::with(LabOptions {
        hosts: 1,
        ..LabOptions::default()
    })
    .expect("lab up");
    let host = lab.host(0);
    let work = tempfile::tempdir().expect("tempdir");
    let secret = "luks-tty-6620-marble";

    let run = install_on_tty(host, work.path(), &[secret, secret], secret);
    assert_eq!(run.code, Some(3), "{}", run.shown);
    assert!(
        run.shown.contains("Passphrase for cryptroot: "),
        "{}",
        run.shown
    );
    assert!(
        run.shown.contains("Repeat the passphrase for cryptroot: "),
        "{}",
        run.shown
    );
    assert!(run.shown.contains("shares its kernel"), "{}", run.shown);
    assert!(
        run.shown.contains("dry run: nothing was written"),
        "{}",
        run.shown
    );
    assert!(
        !run.shown.contains(secret),
        "echoed or printed:\n{}",
        run.shown
    );
    assert!(run.argv_leaks.is_empty(), "in argv: {:?}", run.argv_leaks);

    let run = install_on_tty(host, work.path(), &[secret, "luks-tty-other"], secret);
    assert_eq!(run.code, Some(2), "{}", run.shown);
    assert!(
        run.shown
            .contains("the passphrases for cryptroot do not match"),
        "{}",
        run.shown
    );
    assert!(!run.shown.contains("dry run"), "{}", run.shown);
    assert!(!run.shown.contains(secret), "{}", run.shown);
    assert!(run.argv_leaks.is_empty(), "in argv: {:?}", run.argv_leaks);
    assert!(!work.path().join("state").join("node1.json").exists());
}

/// Several nodes in one run, bounded by `--max-parallel`: two lab hosts, each refused in its own preflight
/// (shared kernel) with its own event lines. With `--max-parallel 1` the second node starts only after
/// the first has ended; with 2 both run, and the run's exit code is the worst node's.
#[test]
fn several_nodes_are_installed_at_most_max_parallel_at_a_time() {
    let lab = Lab::up(2).expect("lab up");
    let (a, b) = (lab.host(0), lab.host(1));
    let work = tempfile::tempdir().expect("tempdir");
    let target = |name: &str, h: &LabHost| {
        let t = h.target();
        format!("{name}={}@{}:{}", "root", t.host, t.port.unwrap_or(22))
    };
    let run = |max: &str| -> (Option<i32>, Vec<serde_json::Value>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
            .args(["install", "n1,n2", "--system"])
            .arg("/nix/store/00000000000000000000000000000000-nixpave-test-system")
            .arg("--target")
            .arg(target("n1", a))
            .arg("--target")
            .arg(target("n2", b))
            .arg("-i")
            .arg(a.identity_file())
            .arg("--known-hosts")
            .arg(a.known_hosts())
            .arg("--kexec")
            .arg(tarball(work.path()))
            .arg("--disk-config")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../nixpave-install/tests/fixtures/layout-root.nix"),
            )
            .args(["--yes-wipe-all-disks", "--json", "--max-parallel", max])
            .arg("--state-dir")
            .arg(work.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .expect("nixpave runs");
        let events = text(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (out.status.code(), events, text(&out.stderr))
    };
    let positions = |events: &[serde_json::Value], node: &str| -> Vec<usize> {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["host"] == node)
            .map(|(i, _)| i)
            .collect()
    };

    let (code, events, stderr) = run("1");
    assert_eq!(code, Some(3), "{stderr}");
    // The envelope of install's events (README, "JSON output"): kinds and fields, no values. With
    // --max-parallel 1 the order of the lines is fixed.
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let shapes = nixpave_testsupport::json_lines_shapes(&lines.join("\n"), 3, &["event", "phase"]);
    insta::assert_snapshot!(
        "json-install-refused",
        serde_json::to_string_pretty(&shapes).expect("json")
    );
    for node in ["n1", "n2"] {
        assert!(
            events
                .iter()
                .any(|e| e["host"] == node && e["event"] == "refused"),
            "{node} not refused: {events:?}"
        );
    }
    let (n1, n2) = (positions(&events, "n1"), positions(&events, "n2"));
    assert!(
        n1.last() < n2.first(),
        "--max-parallel 1 ran the nodes side by side: {events:?}"
    );

    let (code, events, stderr) = run("2");
    assert_eq!(code, Some(3), "{stderr}");
    // (Side by side here: the two preflights' events interleave, which is what the bound of 1 forbids.)
    let (n1, n2) = (positions(&events, "n1"), positions(&events, "n2"));
    assert!(!n1.is_empty() && !n2.is_empty(), "{events:?}");
    assert!(!work.path().join("state").join("n1.json").exists());
    assert!(!work.path().join("state").join("n2.json").exists());
}
