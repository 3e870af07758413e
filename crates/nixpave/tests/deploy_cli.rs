//! `nixpave deploy`, `nixpave status` and `nixpave rollback` against real lab hosts, from a flake with no
//! inputs evaluated by the real nix.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use nixpave_lab::testing::{Lab, LabOptions};

fn nix_conf(dir: &Path) -> std::path::PathBuf {
    nixpave_testsupport::write_nix_conf(&dir.join("nixconf"))
}

/// A flake with nodes host1 and host2 (lab host names) on fixture systems tagged TAG; host2 fails if asked.
fn write_flake(dir: &Path, tag: &str, host2_fails: bool) {
    write_flake_with(dir, tag, host2_fails, 0);
}

/// Like [`write_flake`], with activations that take `delay` seconds.
fn write_flake_with(dir: &Path, tag: &str, host2_fails: bool, delay: u32) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixpave-deploy/tests/fixtures");
    std::fs::copy(fixtures.join("system.nix"), dir.join("system.nix")).expect("copy fixture");
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: {{
  deploy.confirmTimeout = 5;
  deploy.nodes.host1 = {{ hostname = "host1"; tags = [ "first" ]; profiles.system.path = import ./system.nix {{ tag = "{tag}"; delay = "{delay}"; }}; }};
  deploy.nodes.host2 = {{ hostname = "host2"; profiles.system.path = import ./system.nix {{ tag = "{tag}"; fail = {host2_fails}; delay = "{delay}"; }}; }};
}}; }}"#
        ),
    )
    .expect("flake");
}

struct Env {
    lab: Lab,
    dir: tempfile::TempDir,
    conf: std::path::PathBuf,
    /// A directory put first on nixpave's `PATH` (the `ssh` it and nix run by name), if any.
    path_first: Option<std::path::PathBuf>,
}

impl Env {
    /// A lab of these hosts, with a scratch directory and its nix.conf.
    fn new(lab: Lab) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        Env {
            lab,
            conf: nix_conf(dir.path()),
            dir,
            path_first: None,
        }
    }

    fn nixpave(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixpave"));
        if let Some(dir) = &self.path_first {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let dirs = std::iter::once(dir.clone()).chain(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        }
        cmd.args(args)
            // Logins are counted: a developer's kept connections must not carry over.
            .env_remove("NIXPAVE_SSH_PERSIST")
            .env("NIXPAVE_LAB_DIR", self.lab.base_dir())
            .env("NIX_CONF_DIR", &self.conf)
            .stdin(Stdio::null())
            .output()
            .expect("nixpave runs")
    }
    fn flake(&self) -> String {
        self.dir.path().display().to_string()
    }
}

use nixpave_testsupport::output_text as text;

fn final_report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn outcomes(report: &serde_json::Value) -> Vec<String> {
    report["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["outcome"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn deploy_status_rollback_through_the_cli() {
    deploy_status_rollback(Env::new(Lab::up(2).expect("lab up")), "cli");
}

/// The same with current OpenSSH (10, `scripts/openssh-current.sh`) on both ends, as users of current
/// distributions have it: the lab hosts run its sshd, nixpave (and nix) its ssh. Every master connection
/// negotiated OpenSSH 10's default post-quantum key exchange, which OpenSSH 9.2 (Debian 12) lacks on
/// either end, so this fails if either side is the old one.
#[test]
fn deploy_status_rollback_through_the_cli_with_openssh_10_on_both_ends() {
    let openssh = match nixpave_lab::testing::current_openssh() {
        Ok(openssh) => openssh,
        Err(e) => return nixpave_testsupport::skip(&e.to_string()),
    };
    let version = Command::new(openssh.bin.join("ssh"))
        .arg("-V")
        .output()
        .expect("ssh -V");
    let version = String::from_utf8_lossy(&version.stderr);
    assert!(version.starts_with("OpenSSH_10."), "{version}");
    let lab = Lab::with(LabOptions {
        hosts: 2,
        sshd: Some(openssh.sshd.clone()),
        ..LabOptions::default()
    })
    .expect("lab up");
    let mut env = Env::new(lab);
    env.path_first = Some(openssh.bin.clone());
    let env = deploy_status_rollback(env, "ssh10");
    for h in env.lab.hosts() {
        let kex = h.key_exchanges();
        // Masters keep ssh's default; nixpave's fresh-login proofs ask for curve25519 first.
        assert!(
            kex.iter().any(|k| k == "mlkem768x25519-sha256"),
            "{}: {kex:?}",
            h.name()
        );
        assert!(
            kex.iter()
                .all(|k| k == "mlkem768x25519-sha256" || k == "curve25519-sha256"),
            "{}: {kex:?}",
            h.name()
        );
    }
}

/// The same on NixOS-shaped hosts: no tools at FHS paths, nix only in the default profile, NixOS's PATH.
#[test]
fn deploy_status_rollback_through_the_cli_on_nixos_shaped_hosts() {
    let lab = Lab::up_nixos(2).expect("lab up");
    for h in lab.hosts() {
        let out = h
            .run_inside(&["sh", "-c", "command -v nix-env; ls /usr/bin | wc -l"])
            .expect("nsenter");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/nix/var/nix/profiles/default/bin/nix-env\n3\n"
        );
    }
    deploy_status_rollback(Env::new(lab), "clinx");
}

/// Deploy (fresh, no-op, dry run, a failing host), `status`, `rollback` and `status` again through the CLI;
/// gives the environment back for more checks.
fn deploy_status_rollback(env: Env, tag: &str) -> Env {
    let lab = env.lab.name().to_string();
    let flake = env.flake();
    let tag = format!("{tag}-{}", std::process::id());
    write_flake(env.dir.path(), &format!("{tag}-a"), false);

    let out = env.nixpave(&["deploy", &flake, "--lab", &lab, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(outcomes(&final_report(&out)), ["deployed", "deployed"]);
    // The JSON envelope (README, "JSON output"): per-host events name the host in `host`.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if ["phase", "log", "finished"].contains(&event["event"].as_str().unwrap_or_default()) {
            assert!(event["host"].is_string(), "{line}");
        }
    }

    let out = env.nixpave(&["deploy", &flake, "--lab", &lab, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = final_report(&out);
    assert_eq!(outcomes(&report), ["unchanged", "unchanged"]);
    assert_eq!(
        report["ssh_handshakes"], 2,
        "one login per host for a no-op"
    );

    let out = env.nixpave(&[
        "deploy",
        &format!("{flake}#host1"),
        "--lab",
        &lab,
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("plan (dry run, nothing changed)"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("host2"), "{}", text(&out));

    let out = env.nixpave(&["deploy", &flake, "--lab", &lab, "--on", "nothing-*"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // host2's new system fails to activate: partial failure, exit 4, host2 named with its log.
    write_flake(env.dir.path(), &format!("{tag}-b"), true);
    let out = env.nixpave(&["deploy", &flake, "--lab", &lab]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(4), "{shown}");
    assert!(
        shown.contains("1 of 2 host(s) succeeded; not succeeded: host2"),
        "{shown}"
    );
    assert!(shown.contains("activation failed on purpose"), "{shown}");

    let out = env.nixpave(&["status", &flake, "--lab", &lab, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(rows[0]["profiles"][0]["generation"], 2);
    assert_eq!(rows[1]["profiles"][0]["last"]["state"], "rolled-back");
    assert_eq!(
        rows[1]["profiles"][0]["last"]["reason"],
        "activation-failed"
    );
    assert_eq!(rows[1]["profiles"][0]["generation"], 1);

    let out = env.nixpave(&["rollback", &flake, "--lab", &lab, "--on", "@first"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = env.nixpave(&["status", &flake, "--lab", &lab, "--json", "--on", "host1"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(rows[0]["profiles"][0]["generation"], 1);
    assert_eq!(rows[0]["profiles"][0]["last"]["reason"], "manual-rollback");
    env
}

/// `--ssh-persist`: each host's master connection stays open after the run, and the next runs (deploy, no-op,
/// status) log in no more; the proof of a magic rollback is still a new login every time.
#[test]
fn persistent_connections_carry_the_next_runs_without_new_logins() {
    let env = Env::new(Lab::up(2).expect("lab up"));
    let lab = env.lab.name().to_string();
    let flake = env.flake();
    let tag = format!("persist-{}", std::process::id());
    let logins = || -> usize { env.lab.hosts().iter().map(|h| h.accepted_logins()).sum() };
    let deploy = || {
        let out = env.nixpave(&[
            "deploy",
            &flake,
            "--lab",
            &lab,
            "--json",
            "--ssh-persist",
            "120",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        final_report(&out)
    };

    write_flake(env.dir.path(), &format!("{tag}-a"), false);
    let report = deploy();
    assert_eq!(outcomes(&report), ["deployed", "deployed"]);
    assert_eq!(report["ssh_handshakes"], 4, "a master and a proof per host");
    assert_eq!(logins(), 4);

    let report = deploy();
    assert_eq!(outcomes(&report), ["unchanged", "unchanged"]);
    assert_eq!(report["ssh_handshakes"], 0, "the masters are still open");
    assert_eq!(logins(), 4);

    write_flake(env.dir.path(), &format!("{tag}-b"), false);
    let report = deploy();
    assert_eq!(outcomes(&report), ["deployed", "deployed"]);
    assert_eq!(report["ssh_handshakes"], 2, "only the proofs log in");
    assert_eq!(logins(), 6);

    let status = |persist: &str| {
        let out = env.nixpave(&[
            "status",
            &flake,
            "--lab",
            &lab,
            "--json",
            "--ssh-persist",
            persist,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    status("120");
    assert_eq!(logins(), 6, "status reuses the masters too");
    status("0");
    assert_eq!(logins(), 8, "without it, a run opens its own");
}

#[test]
fn ctrl_c_before_confirmation_leaves_the_hosts_to_roll_back() {
    let env = Env::new(Lab::up(2).expect("lab up"));
    let lab = env.lab.name().to_string();
    let flake = env.flake();
    let tag = format!("int-{}", std::process::id());
    write_flake(env.dir.path(), &format!("{tag}-a"), false);
    let out = env.nixpave(&["deploy", &flake, "--lab", &lab]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Activations take 3 s; Ctrl-C arrives while they run.
    write_flake_with(env.dir.path(), &format!("{tag}-b"), false, 3);
    let child = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(["deploy", &flake, "--lab", &lab])
        .env("NIXPAVE_LAB_DIR", env.lab.base_dir())
        .env("NIX_CONF_DIR", &env.conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nixpave runs");
    let state = |h: &nixpave_lab::testing::LabHost| {
        let out = h
            .run_inside(&["cat", "/nix/var/nixpave/deploy/system.json"])
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !env
        .lab
        .hosts()
        .iter()
        .all(|h| state(h).contains("\"state\":\"activating\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "activation never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("nixpave exits");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    // Nobody confirmed: both hosts go back to generation 1 by themselves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for h in env.lab.hosts() {
        while !state(h).contains("\"state\":\"rolled-back\"") {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {}",
                h.name(),
                state(h)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(
            state(h).contains("\"reason\":\"no-confirmation\""),
            "{}",
            state(h)
        );
    }
}

/// host2's system fails to build (`buildFail`): the deploy names the derivation and shows what its builder
/// printed, in the build's error and in host2's row, not more often.
#[test]
fn a_failed_build_shows_its_builder_s_output() {
    let env = Env::new(Lab::up(2).expect("lab up"));
    let lab = env.lab.name().to_string();
    let tag = format!("buildlog-{}", std::process::id());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixpave-deploy/tests/fixtures");
    std::fs::copy(
        fixtures.join("system.nix"),
        env.dir.path().join("system.nix"),
    )
    .expect("copy");
    std::fs::write(
        env.dir.path().join("flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: {{
  deploy.nodes.host1 = {{ hostname = "host1"; profiles.system.path = import ./system.nix {{ tag = "{tag}-1"; }}; }};
  deploy.nodes.host2 = {{ hostname = "host2"; profiles.system.path = import ./system.nix {{ tag = "{tag}-2"; buildFail = true; }}; }};
}}; }}"#
        ),
    )
    .expect("flake");
    let out = env.nixpave(&["deploy", &env.flake(), "--lab", &lab]);
    let shown = text(&out);
    assert_ne!(out.status.code(), Some(0), "{shown}");
    let drv = format!("-nixpave-test-system-{tag}-2.drv");
    assert!(
        shown.contains(&format!("{drv}' failed with exit code 1"))
            && shown.contains(&format!("{drv}:"))
            && shown.contains("1 log line of the build of /nix/store/"),
        "{shown}"
    );
    // The table and the error indent it. Once in the build's error, once in host2's row (host1's row at most
    // names the derivation).
    assert_eq!(
        shown.matches("> build failed on purpose").count(),
        2,
        "{shown}"
    );
    assert!(!shown.contains('\u{1b}'), "no terminal escapes: {shown}");
}
