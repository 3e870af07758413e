//! `nixpave exec`, `nixpave facts` and `nixpave lab` against real lab hosts.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nixpave_lab::testing::{Lab, LabOptions};

fn nixpave(lab: &Lab) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixpave"));
    cmd.env("NIXPAVE_LAB_DIR", lab.base_dir())
        .env("NO_COLOR", "1");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("nixpave runs")
}

/// `0.12s` → `N.NNs`: wall times in a table, masked without changing the columns' widths.
fn mask_times(text: &str) -> String {
    text.lines()
        .map(|line| {
            line.split(' ')
                .map(|w| match w.strip_suffix('s') {
                    Some(n) if n.contains('.') && n.parse::<f64>().is_ok() => {
                        w.replace(|c: char| c.is_ascii_digit(), "N")
                    }
                    _ => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn exec_runs_on_five_hosts_in_parallel_with_prefixes_and_a_summary() {
    let lab = Lab::up(5).expect("lab up");
    let out = run(nixpave(&lab).args([
        "exec",
        lab.name(),
        "--",
        "sh",
        "-c",
        "date +%s.%N; sleep 1; hostname -I; echo warn >&2; date +%s.%N",
    ]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for host in lab.hosts() {
        let line = format!("{} | {}", host.name(), host.address());
        assert!(stdout.contains(&line), "missing `{line}` in\n{stdout}");
        assert!(
            stderr.contains(&format!("{} ! warn", host.name())),
            "{stderr}"
        );
    }
    assert!(stderr.contains("5/5 hosts succeeded"), "{stderr}");
    // In parallel: every host started its command before any host finished (each runs 1 s).
    let times = |host: &str| -> Vec<f64> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{host} | ")))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .collect()
    };
    let spans: Vec<Vec<f64>> = lab.hosts().iter().map(|h| times(h.name())).collect();
    assert!(spans.iter().all(|t| t.len() == 2), "{stdout}");
    let last_start = spans.iter().map(|t| t[0]).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|t| t[1]).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "hosts ran one after another:\n{stdout}"
    );

    // --parallel 1 runs them one at a time.
    let started = Instant::now();
    let out = run(nixpave(&lab).args(["exec", "--parallel", "1", lab.name(), "--", "sleep", "1"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "--parallel 1 is sequential"
    );
}

#[test]
fn exec_exit_status_is_partial_when_some_hosts_fail_and_failed_when_all_do() {
    let lab = Lab::up(3).expect("lab up");
    lab.host(2).stop_sshd();
    let name = lab.name();
    let out = run(nixpave(&lab).args(["exec", "--connect-timeout", "3", name, "--", "true"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("2/3 hosts succeeded"), "{stderr}");
    assert!(
        stderr.contains("host3") && stderr.contains("Connection refused"),
        "{stderr}"
    );
    insta::assert_snapshot!(
        "exec-summary-one-host-down",
        mask_times(&stderr).replace(lab.host(2).address(), "ADDRESS")
    );

    let out = run(nixpave(&lab).args([
        "exec",
        &format!("{name}:host1,{name}:host2"),
        "--",
        "sh -c 'exit 3'",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("failed"));
    // exec's summary table as a user sees it (no colour into a pipe; times masked, same width).
    insta::assert_snapshot!("exec-summary-failed", mask_times(&text(&out.stderr)));

    // --json: one array with every host's result and output.
    let out = run(nixpave(&lab).args([
        "exec",
        "--json",
        "--connect-timeout",
        "3",
        name,
        "--",
        "hostname -I",
    ]));
    assert_eq!(out.status.code(), Some(4));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["result"], "ok");
    assert_eq!(rows[0]["exit"], 0);
    assert!(
        rows[0]["stdout"]
            .as_str()
            .is_some_and(|o| o.contains(lab.host(0).address())),
        "{rows}"
    );
    assert_eq!(rows[2]["result"], "error");
    assert!(
        rows[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "{rows}"
    );

    // Bad targets are bad input (2), before anything connects.
    let out = run(nixpave(&lab).args(["exec", &format!("{name}:host9"), "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("host1, host2, host3"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_refuses_a_changed_host_key_with_exit_3() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let fake = lab.dir().join("fake_key");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&fake)
        .status()
        .expect("ssh-keygen");
    assert!(ok.success());
    let public = std::fs::read_to_string(fake.with_extension("pub")).expect("pub");
    let known = lab.dir().join("bad_known_hosts");
    std::fs::write(&known, format!("{} {}", host.address(), public)).expect("write");
    let out = run(nixpave(&lab)
        .args(["exec", "--known-hosts"])
        .arg(&known)
        .args([lab.name(), "--", "true"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("expected") && stderr.contains("offered"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("SHA256:").count(), 2, "{stderr}");
}

#[test]
fn sigint_stops_every_host_and_leaves_no_ssh_processes() {
    let lab = Lab::up(3).expect("lab up");
    // A duration no other test on this machine uses, to find exactly our commands.
    let seconds = format!("30.{}", std::process::id() % 997);
    // Exactly the remote command (not nixpave's or ssh's command lines, which mention it).
    let sleeping = format!("sleep\0{seconds}\0");
    let child = nixpave(&lab)
        .args(["exec", lab.name(), "--", "sleep", &seconds])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut child = KillOnDrop(Some(child));
    let marker = format!("/tmp/nixpave-ssh-{pid}-");
    // Wait until all three hosts run the command.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab
        .hosts()
        .iter()
        .map(|h| h.accepted_logins())
        .sum::<usize>()
        < 3
        || count_processes(&sleeping) < 3
    {
        assert!(Instant::now() < deadline, "commands never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(count_processes(&marker) >= 3, "ssh processes are running");
    let started = Instant::now();
    // SIGINT to nixpave alone (not its process group), as `kill -INT` would send it.
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = loop {
        if let Some(status) = child.get().try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nixpave did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.take().wait_with_output().expect("output");
    assert_eq!(status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // ssh and the remote commands go away soon after (their kill is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_processes(&marker) + count_processes(&sleeping) > 0 {
        assert!(
            Instant::now() < deadline,
            "left: {} ssh processes, {} remote commands (must be stopped on the hosts too)",
            count_processes(&marker),
            count_processes(&sleeping)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child if the test fails before it exits, so no nixpave outlives the test.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child")
    }

    fn take(&mut self) -> std::process::Child {
        self.0.take().expect("child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Processes (not zombies) whose command line contains `pattern`, or is exactly `pattern` when
/// it is NUL-terminated (raw `/proc/PID/cmdline` form).
fn count_processes(pattern: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = text(&cmdline);
            let matches = if pattern.ends_with('\0') {
                cmdline == pattern
            } else {
                cmdline.replace('\0', " ").contains(pattern)
            };
            !zombie && matches
        })
        .count()
}

#[test]
fn facts_json_of_a_lab_host() {
    let lab = Lab::with(LabOptions {
        hosts: 1,
        disks: 1,
        disk_size: 32 << 20,
        ..LabOptions::default()
    })
    .expect("lab up");
    let out = run(nixpave(&lab).args(["facts", "--json", &format!("{}:host1", lab.name())]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // Always an array, also for one host.
    assert_eq!(all[0]["host"], "host1");
    let facts = &all[0]["facts"];
    assert_eq!(facts["lab_host"], true);
    assert_eq!(facts["is_root"], true);
    assert_eq!(facts["kexec"]["possible"], false);
    let disk = &lab.host(0).disks()[0];
    let disks = facts["disks"].as_array().expect("disks");
    assert!(
        disks
            .iter()
            .any(|d| d["path"] == disk.as_str() && d["size"] == 32 << 20),
        "{disks:?}"
    );

    let human = run(nixpave(&lab).args(["facts", lab.name()]));
    assert_eq!(human.status.code(), Some(0));
    let human = text(&human.stdout);
    assert!(
        human.contains("nixpave lab host") && human.contains(disk.as_str()),
        "{human}"
    );
}

#[test]
fn lab_up_status_ssh_and_down_through_the_cli() {
    let dir = std::path::PathBuf::from(format!("/var/tmp/nixpave-cli-lab-{}", std::process::id()));
    let cli = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixpave"));
        cmd.env("NIXPAVE_LAB_DIR", &dir).stdin(Stdio::null());
        cmd
    };
    let name = format!("cli{}", std::process::id());
    let out = cli()
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--hosts",
            "2",
            "--disks",
            "1",
            "--disk-size",
            "16M",
        ])
        .output()
        .expect("lab up");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("is up: 2 hosts"),
        "{}",
        text(&out.stdout)
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(&name).join("state.json")).expect("state"),
    )
    .expect("json");
    let netns = state["hosts"][0]["netns"]
        .as_str()
        .expect("netns")
        .to_string();
    let disk = state["hosts"][0]["disks"][0]["device"]
        .as_str()
        .expect("disk")
        .to_string();

    let again = cli()
        .args(["lab", "up", "--name", &name])
        .output()
        .expect("lab up twice");
    assert_eq!(again.status.code(), Some(2), "a second up is refused");

    let status = cli()
        .args(["lab", "status", "--name", &name])
        .output()
        .expect("status");
    assert_eq!(status.status.code(), Some(0));
    assert_eq!(
        text(&status.stdout).matches("running  open").count(),
        2,
        "{}",
        text(&status.stdout)
    );

    let ssh = cli()
        .args([
            "lab",
            "ssh",
            "--name",
            &name,
            "host2",
            "--",
            "cat",
            "/etc/ssh/nixpave-lab-host",
        ])
        .output()
        .expect("lab ssh");
    assert_eq!(ssh.status.code(), Some(0), "{}", text(&ssh.stderr));
    assert_eq!(text(&ssh.stdout).trim(), name);

    let exec = cli()
        .args(["exec", &name, "--", "true"])
        .output()
        .expect("exec");
    assert_eq!(exec.status.code(), Some(0), "{}", text(&exec.stderr));

    let down = cli()
        .args(["lab", "down", "--name", &name])
        .output()
        .expect("down");
    assert_eq!(down.status.code(), Some(0), "{}", text(&down.stderr));
    assert!(!dir.join(&name).exists());
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!text(&namespaces.stdout).contains(&netns));
    let loops = Command::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE"])
        .output()
        .expect("losetup");
    assert!(
        !text(&loops.stdout)
            .lines()
            .any(|l| l.starts_with(&format!("{disk} ")) && l.contains(&name)),
        "{}",
        text(&loops.stdout)
    );
    let down = cli()
        .args(["lab", "down", "--name", &name])
        .output()
        .expect("down again");
    assert_eq!(down.status.code(), Some(0), "down is idempotent");
    assert!(text(&down.stdout).contains("nothing to do"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lab_up_flavour_nixos_through_the_cli() {
    let dir =
        std::path::PathBuf::from(format!("/var/tmp/nixpave-cli-nxlab-{}", std::process::id()));
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nixpave"))
            .env("NIXPAVE_LAB_DIR", &dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nixpave runs")
    };
    let name = format!("nx{}", std::process::id());
    let out = cli(&[
        "lab",
        "up",
        "--name",
        &name,
        "--hosts",
        "1",
        "--flavour",
        "nixos",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let up: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(up["flavour"], "nixos");
    assert!(up["duration_ms"].is_u64(), "{up}");
    assert_eq!(up["hosts"][0]["host"], "host1", "{up}");
    let ssh = cli(&[
        "lab",
        "ssh",
        "--name",
        &name,
        "host1",
        "--",
        "sh",
        "-c",
        "ls /usr/bin | tr '\\n' ' '; command -v ln; env -i /bin/sh -c 'ln --version' || echo no-ln",
    ]);
    assert_eq!(ssh.status.code(), Some(0), "{}", text(&ssh.stderr));
    assert_eq!(
        text(&ssh.stdout),
        "bash env sh /run/current-system/sw/bin/ln\nno-ln\n"
    );
    let facts = cli(&["facts", "--json", &format!("{name}:host1")]);
    assert_eq!(facts.status.code(), Some(0), "{}", text(&facts.stderr));
    let all: serde_json::Value = serde_json::from_slice(&facts.stdout).expect("json");
    let facts = &all[0]["facts"];
    assert_eq!(facts["os"]["id"], "debian");
    assert_eq!(facts["os"]["is_nixos"], false);
    assert_eq!(facts["nix_path"], "/nix/var/nix/profiles/default/bin/nix");
    let down = cli(&["lab", "down", "--name", &name]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lab_commands_refuse_bad_input_and_non_root_users() {
    let base = format!("/var/tmp/nixpave-cli-refusals-{}", std::process::id());
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
            .env("NIXPAVE_LAB_DIR", &base)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nixpave runs");
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = cli(&["lab", "up", "--dir", "/tmp/labs"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("under /tmp"), "{err}");
    let (code, err) = cli(&["lab", "up", "--name", "Bad_Name"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = cli(&["lab", "status", "--name", "nosuchlab"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nixpave lab up --name nosuchlab"), "{err}");
    let (code, err) = cli(&["lab", "ssh", "--name", "nosuchlab", "host1"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = cli(&["lab", "up", "--hosts", "0"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = cli(&["lab", "up", "--flavour", "arch"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("debian, nixos"), "{err}");

    // Not root: refused with the reason, nothing created.
    let out = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_nixpave"))
        .args(["lab", "up", "--name", "nonroot", "--dir", &base])
        .stdin(Stdio::null())
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs root"),
        "{}",
        text(&out.stderr)
    );
    assert!(!std::path::Path::new(&base).join("nonroot").exists());
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn ask_sudo_password_prompts_once_per_host_on_the_terminal() {
    let lab = Lab::with(LabOptions {
        hosts: 2,
        users: vec![nixpave_lab::hosts::LabUser {
            name: "bob".into(),
            sudo_password: Some("pw-4711".into()),
        }],
        ..LabOptions::default()
    })
    .expect("lab up");
    let targets: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| format!("bob@{}", h.address()))
        .collect();
    let host = lab.host(0);
    let words = [
        env!("CARGO_BIN_EXE_nixpave").to_string(),
        "exec".into(),
        "--ask-sudo-password".into(),
        "-i".into(),
        host.identity_file().display().to_string(),
        "--known-hosts".into(),
        host.known_hosts().display().to_string(),
        targets.join(","),
        "--".into(),
        "id".into(),
        "-u".into(),
    ];
    let cmdline = words
        .iter()
        .map(|w| nixpave_remote::shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    // `script` gives nixpave a real terminal; the two passwords are typed into it.
    let mut child = Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    // The passwords are typed at once; the terminal stays open until nixpave has finished
    // (script's output ends), whatever that takes.
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"pw-4711\npw-4711\n").expect("type");
    let mut stdout = child.stdout.take().expect("stdout");
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut all);
        let _ = done.send(all);
    });
    let shown = output
        .recv_timeout(Duration::from_secs(120))
        .expect("nixpave exec finished within 120 s");
    drop(stdin);
    let _ = child.wait().expect("script exits");
    let shown = text(&shown);
    assert_eq!(
        shown.matches("sudo password for bob@").count(),
        2,
        "{shown}"
    );
    for t in &targets {
        assert!(
            shown.contains(&format!("{t} | 0")),
            "root via sudo on {t}:\n{shown}"
        );
    }
    assert!(shown.contains("2/2 hosts succeeded"), "{shown}");
}

/// `exec`, `facts` and `lab status` with `--json` speak the one envelope (README, "JSON output"):
/// one document, each host's entry named by `host`, times as `duration_ms`. Pinned as shapes.
#[test]
fn json_outputs_of_exec_facts_and_lab_share_the_envelope() {
    let lab = Lab::up(1).expect("lab up");
    let keep = ["host", "result"];
    let mut shapes = serde_json::Map::new();
    for (name, args, depth) in [
        ("exec", vec!["exec", "--json", lab.name(), "--", "true"], 3),
        // The facts themselves have their own type; the envelope is the rows around them.
        ("facts", vec!["facts", "--json", lab.name()], 1),
        (
            "lab status",
            vec!["lab", "status", "--name", lab.name(), "--json"],
            3,
        ),
    ] {
        let out = run(nixpave(&lab).args(&args));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        shapes.insert(
            name.into(),
            nixpave_testsupport::json_shape(&value, depth, &keep),
        );
    }
    insta::assert_snapshot!(
        "json-exec-facts-lab",
        serde_json::to_string_pretty(&shapes).expect("json")
    );
}
