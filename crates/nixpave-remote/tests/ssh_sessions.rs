//! Commands of the ssh transport are sessions the master opens for nixpave itself (OpenSSH's multiplexing
//! protocol), not `ssh` mux client processes; and when the master will not open one, an `ssh` client runs
//! the command the long way. Its own test binary: it puts a recording `ssh` first on this process's PATH.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nixpave_lab::testing::Lab;
use nixpave_remote::{OutputStream, SshOptions, SshTransport, Transport, UploadSpec};

/// Every command below carries this word, so the recording `ssh` shows whether one ran through it.
const MARK: &str = "npsession";

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Puts an `ssh` that appends its arguments to `log` and then runs the real one first on PATH.
fn record_ssh(dir: &Path, log: &Path) {
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v ssh"])
        .output()
        .expect("command -v ssh");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "no ssh on PATH");
    let wrapper = dir.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{real}' \"$@\"\n",
            log.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let path = std::env::var("PATH").unwrap_or_default();
    // This test binary has one test: nothing else reads the environment meanwhile.
    std::env::set_var("PATH", format!("{}:{path}", dir.display()));
}

fn ssh_runs_of_marked_commands(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(MARK))
        .map(str::to_string)
        .collect()
}

#[test]
fn commands_are_sessions_of_the_master_and_a_refused_session_goes_through_ssh() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let log: PathBuf = dir.path().join("ssh.log");
    record_ssh(dir.path(), &log);
    let ssh = host.connect().expect("connect");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("-M ")),
        "the master is started by the recording ssh"
    );

    // Output of both streams (each in order) and the exit status.
    let mut lines = Vec::new();
    let out = ssh
        .run_streaming(
            &argv(&[
                "sh",
                "-c",
                &format!("echo one; echo two >&2; echo {MARK}; exit 7"),
            ]),
            None,
            &mut |stream, line| lines.push((stream, line.to_string())),
        )
        .expect("runs");
    assert_eq!(out.status, Some(7));
    assert_eq!(out.stdout_str(), format!("one\n{MARK}\n"));
    assert!(lines.contains(&(OutputStream::Stderr, "two".to_string())));
    assert_eq!(out.stderr_tail(1), "two");

    // stdin: 300 kB arrive whole, and a command without stdin reads end-of-file at once.
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = ssh
        .run(
            &argv(&["sh", "-c", &format!("wc -c; : {MARK}")]),
            Some(&data),
        )
        .expect("wc");
    assert_eq!(out.stdout_str().trim(), "300000");
    let out = ssh
        .run(&argv(&["sh", "-c", &format!("cat; echo {MARK}")]), None)
        .expect("cat");
    assert_eq!(out.stdout_str(), format!("{MARK}\n"));

    // Uploads and reads are commands too.
    let dest = format!("/tmp/{MARK}.txt");
    let spec = UploadSpec {
        dest: dest.clone().into(),
        mode: 0o600,
        owner: None,
    };
    ssh.upload(b"hello\n", &spec).expect("upload");
    assert_eq!(ssh.read_file(Path::new(&dest)).expect("read"), b"hello\n");

    // A stopped session (its time limit) ends on the host too.
    let options = SshOptions {
        command_timeout: Some(Duration::from_secs(1)),
        ..host.ssh_options()
    };
    let limited = SshTransport::connect(&host.target(), options).expect("connect");
    let started = Instant::now();
    let err = limited
        .run(&argv(&["sh", "-c", &format!("sleep 53; : {MARK}")]), None)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.sh("ps -eo args | grep -c '^sleep 53' || true") != "0" {
        assert!(Instant::now() < deadline, "the stopped sleep lives on");
        std::thread::sleep(Duration::from_millis(50));
    }

    let through_ssh = ssh_runs_of_marked_commands(&log);
    assert!(
        through_ssh.is_empty(),
        "commands ran through ssh processes: {through_ssh:?}"
    );

    // An sshd that allows no sessions: the master refuses ours, and an `ssh` client tries, reporting the
    // refusal as ssh does (exit 255, its message), with the master still alive.
    host.sh("sed -i '1i MaxSessions 0' /etc/ssh/sshd_config");
    let pid = host.state().sshd_pid.expect("sshd pid");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusing = loop {
        match host.connect() {
            Ok(t) => break t,
            Err(e) => {
                assert!(Instant::now() < deadline, "sshd does not come back: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let out = refusing
        .run(&argv(&["sh", "-c", &format!("echo {MARK}")]), None)
        .expect("an ssh client's answer");
    assert_eq!(out.status, Some(255), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
    assert_eq!(ssh_runs_of_marked_commands(&log).len(), 1);
}
