//! SshTransport against real lab hosts: commands, streaming, stdin, uploads, reads, facts,
//! host keys, timeouts, one handshake per host, and `nix copy` through the master connection.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nixpave_lab::testing::{Lab, LabOptions};
use nixpave_remote::{
    gather_facts, HostKeyPolicy, OutputStream, SshOptions, SshTransport, Target, Transport,
    TransportError, UploadSpec,
};

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn sh(t: &dyn Transport, script: &str) -> String {
    let out = t.run(&argv(&["sh", "-c", script]), None).expect("runs");
    assert!(out.success(), "`{script}` failed: {}", out.stderr_tail(5));
    out.stdout_str()
}

#[test]
fn runs_streams_and_reports_exit_codes_and_stdin() {
    let lab = Lab::up(1).expect("lab up");
    let ssh = lab.host(0).connect().expect("connect");
    assert_eq!(ssh.host(), "host1");

    let mut lines = Vec::new();
    let out = ssh
        .run_streaming(
            &argv(&["sh", "-c", "echo one; echo two >&2; echo three; exit 7"]),
            None,
            &mut |stream, line| lines.push((stream, line.to_string())),
        )
        .expect("runs");
    assert_eq!(out.status, Some(7));
    assert_eq!(out.stdout_str(), "one\nthree\n");
    assert_eq!(out.stderr_tail(1), "two");
    assert!(lines.contains(&(OutputStream::Stdout, "one".into())));
    assert!(lines.contains(&(OutputStream::Stderr, "two".into())));

    // Every word arrives intact, whatever the remote shell would make of it.
    let tricky = [
        "a b",
        "it's",
        "$HOME",
        "`id`",
        "*",
        "",
        "new\nline",
        ";echo pwned",
    ];
    let mut words = argv(&["printf", "[%s]\\n"]);
    words.extend(tricky.iter().map(|s| s.to_string()));
    let out = ssh.run(&words, None).expect("printf");
    let expected: String = tricky.iter().map(|w| format!("[{w}]\n")).collect();
    assert_eq!(out.stdout_str(), expected);

    // stdin, including binary data.
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = ssh
        .run(&argv(&["sha256sum"]), Some(&data))
        .expect("sha256sum");
    let local = std::process::Command::new("sh")
        .args(["-c", "head -c 0 /dev/null; cat | sha256sum"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(&data)?;
            c.wait_with_output()
        })
        .expect("local sha256sum");
    assert_eq!(out.stdout, local.stdout);

    // A command ssh cannot find is the command's failure (127), not a transport error.
    let out = ssh
        .run(&argv(&["/nonexistent/tool"]), None)
        .expect("ssh ran");
    assert_eq!(out.status, Some(127));
    // Remote exit 255 with a live master is the command's status.
    let out = ssh
        .run(&argv(&["sh", "-c", "exit 255"]), None)
        .expect("ssh ran");
    assert_eq!(out.status, Some(255));
}

#[test]
fn uploads_atomically_with_modes_and_owners_and_reads_back() {
    let lab = Lab::up(1).expect("lab up");
    let ssh = lab.host(0).connect().expect("connect");
    let secret = b"top secret\n";
    ssh.upload(
        secret,
        &UploadSpec {
            dest: "/etc/nixpave-test/deep/secret".into(),
            mode: 0o600,
            owner: Some("root:root".into()),
        },
    )
    .expect("upload");
    ssh.upload(
        b"shared",
        &UploadSpec {
            dest: "/tmp/shared file".into(),
            mode: 0o644,
            owner: Some("nobody:nogroup".into()),
        },
    )
    .expect("upload with owner");
    let stat = sh(
        &ssh,
        "stat -c '%a %U:%G %n' /etc/nixpave-test/deep/secret '/tmp/shared file'; \
         ls -A /etc/nixpave-test/deep /tmp | grep -c nixpave-upload || true",
    );
    assert!(
        stat.contains("600 root:root /etc/nixpave-test/deep/secret"),
        "{stat}"
    );
    assert!(
        stat.contains("644 nobody:nogroup /tmp/shared file"),
        "{stat}"
    );
    assert!(stat.ends_with("0\n"), "no temp files left: {stat}");
    assert_eq!(
        ssh.read_file("/etc/nixpave-test/deep/secret".as_ref())
            .expect("read"),
        secret
    );
    // The host's /etc is this machine's /etc (only /etc/ssh is private): clean up.
    sh(&ssh, "rm -rf /etc/nixpave-test");

    // Replacing a file keeps readers consistent: the new content, the new mode.
    ssh.upload(
        b"v2",
        &UploadSpec {
            dest: "/tmp/shared file".into(),
            mode: 0o400,
            owner: None,
        },
    )
    .expect("replace");
    assert_eq!(
        ssh.read_file("/tmp/shared file".as_ref()).expect("read"),
        b"v2"
    );
    assert!(sh(&ssh, "stat -c %a '/tmp/shared file'").starts_with("400"));

    // A failed upload (unknown owner) names the host and leaves nothing behind.
    let err = ssh
        .upload(
            b"x",
            &UploadSpec {
                dest: "/tmp/owned".into(),
                mode: 0o644,
                owner: Some("no-such-user-xyz".into()),
            },
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("host1") && text.contains("/tmp/owned"),
        "{text}"
    );
    assert_eq!(
        sh(&ssh, "ls -A /tmp | grep -c nixpave-upload || true"),
        "0\n"
    );

    let err = ssh.read_file("/nonexistent".as_ref()).unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");

    // Directories: contents, owner and mode; an existing destination is replaced.
    let src = tempfile_dir();
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("a.txt"), "A").expect("write");
    std::fs::write(src.join("sub/b.txt"), "B").expect("write");
    let spec = UploadSpec {
        dest: "/tmp/tree".into(),
        mode: 0o750,
        owner: Some("nobody:nogroup".into()),
    };
    ssh.upload_dir(&src, &spec).expect("upload dir");
    std::fs::remove_file(src.join("a.txt")).expect("rm");
    ssh.upload_dir(&src, &spec).expect("upload dir again");
    let tree = sh(
        &ssh,
        "cd /tmp/tree && stat -c '%a %U' . && find . -type f | sort && cat sub/b.txt",
    );
    assert_eq!(tree, "750 nobody\n./sub/b.txt\nB");
    let _ = std::fs::remove_dir_all(src);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nixpave-tree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn facts_of_a_lab_host_show_its_disks_nix_and_no_kexec() {
    let lab = Lab::with(LabOptions {
        hosts: 1,
        disks: 2,
        disk_size: 64 << 20,
        ..LabOptions::default()
    })
    .expect("lab up");
    let host = lab.host(0);
    let ssh = host.connect().expect("connect");
    let before = host.accepted_logins();
    let facts = gather_facts(&ssh).expect("facts");
    assert_eq!(host.accepted_logins(), before, "facts reuse the master");
    assert!(facts.is_root && facts.user == "root");
    assert_eq!(facts.arch, std::env::consts::ARCH);
    assert!(
        facts
            .nix_version
            .as_deref()
            .is_some_and(|v| v.contains("2.")),
        "{facts:?}"
    );
    assert!(facts.lab_host);
    assert!(
        !facts.kexec.possible,
        "never kexec a lab host (it is this machine)"
    );
    assert!(facts.memory_bytes > 1 << 30);
    for disk in host.disks() {
        let found = facts
            .disks
            .iter()
            .find(|d| d.path == disk)
            .unwrap_or_else(|| panic!("{disk} not in facts: {:?}", facts.disks));
        assert_eq!(found.size, 64 << 20);
        assert_eq!(found.kind, "loop");
    }
}

#[test]
fn changed_host_key_is_refused_with_both_fingerprints() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    // A known_hosts that records a different key for the host's address.
    let dir = lab.dir().join("mitm");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let key = dir.join("other");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(ok.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let known = dir.join("known_hosts");
    let mut words = public.split_whitespace();
    let line = format!(
        "{} {} {}\n",
        host.address(),
        words.next().expect("type"),
        words.next().expect("key")
    );
    std::fs::write(&known, line).expect("write");
    let fingerprint = |file: &std::path::Path| {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(file)
            .output()
            .expect("ssh-keygen -l");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string()
    };
    let expected = fingerprint(&key.with_extension("pub"));
    let offered = fingerprint(&host.state().root.join("etc-ssh/ssh_host_ed25519_key.pub"));

    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let options = SshOptions {
            known_hosts: Some(known.clone()),
            host_key_policy: policy,
            ..host.ssh_options()
        };
        let err = SshTransport::connect(&host.target(), options).unwrap_err();
        match &err {
            TransportError::HostKeyMismatch {
                expected: e,
                offered: o,
                ..
            } => {
                assert_eq!(e, &expected);
                assert_eq!(o, &offered);
            }
            other => panic!("expected a host key refusal, got {other:?}"),
        }
        assert!(err.is_refusal());
        let text = err.to_string();
        assert!(
            text.contains(&expected) && text.contains(&offered),
            "{text}"
        );
    }
    assert_eq!(host.accepted_logins(), 0, "nothing logged in");
}

#[test]
fn unknown_host_key_needs_accept_new_which_records_it() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let known = lab.dir().join("fresh_known_hosts");
    std::fs::write(&known, "").expect("write");
    let strict = SshOptions {
        known_hosts: Some(known.clone()),
        ..host.ssh_options()
    };
    let err = SshTransport::connect(&host.target(), strict.clone()).unwrap_err();
    assert!(
        matches!(err, TransportError::HostKeyUnknown { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--accept-new-host-key"), "{err}");
    assert!(
        err.to_string().contains("SHA256:"),
        "offered key shown: {err}"
    );

    let accept = SshOptions {
        host_key_policy: HostKeyPolicy::AcceptNew,
        ..strict.clone()
    };
    let ssh = SshTransport::connect(&host.target(), accept).expect("first contact");
    assert!(sh(&ssh, "echo ok").contains("ok"));
    drop(ssh);
    // (Debian hashes known_hosts entries, so look the host up rather than grep for it.)
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", host.address(), "-f"])
        .arg(&known)
        .output()
        .expect("ssh-keygen -F");
    assert!(
        found.status.success(),
        "host recorded in {}",
        known.display()
    );
    // From now on strict checking accepts it.
    SshTransport::connect(&host.target(), strict).expect("known now");
}

#[test]
fn unreachable_hosts_fail_within_the_timeout() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let options = SshOptions {
        connect_timeout: Duration::from_secs(3),
        ..host.ssh_options()
    };

    // An address in the lab subnet that nobody answers for: packets go nowhere.
    let silent = Target {
        host: format!("10.77.{}.250", lab.state().subnet),
        ..host.target()
    };
    let started = Instant::now();
    let err = SshTransport::connect(&silent, options.clone()).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(matches!(err, TransportError::Connection { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("10.77.") || text.contains("host1"), "{text}");
    assert!(
        text.contains("timed out") || text.contains("No route"),
        "{text}"
    );

    // A host whose sshd is stopped: refused at once.
    host.stop_sshd();
    let started = Instant::now();
    let err = SshTransport::connect(&host.target(), options).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert!(err.to_string().contains("is sshd running"), "{err}");
}

#[test]
fn a_connection_that_dies_mid_command_fails_by_keepalive() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let options = SshOptions {
        keepalive_interval: Duration::from_secs(1),
        keepalive_count_max: 2,
        ..host.ssh_options()
    };
    let ssh = SshTransport::connect(&host.target(), options).expect("connect");
    let netns = host.state().netns.clone();
    // The link goes down once the command says it runs on the host (its first line).
    let mut cut = None;
    let started = Instant::now();
    let result = ssh.run_streaming(
        &argv(&["sh", "-c", "echo running; exec sleep 60"]),
        None,
        &mut |_, line| {
            if line == "running" && cut.is_none() {
                cut = Some(
                    std::process::Command::new("ip")
                        .args(["-n", &netns, "link", "set", "eth0", "down"])
                        .status(),
                );
            }
        },
    );
    let elapsed = started.elapsed();
    assert!(cut.expect("the command ran").expect("ip").success());
    let err = result.unwrap_err();
    assert!(matches!(err, TransportError::Connection { .. }), "{err:?}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    let text = err.to_string();
    assert!(
        text.contains("exec sleep 60") && text.contains("partly run"),
        "{text}"
    );
}

#[test]
fn one_handshake_per_host_carries_commands_uploads_and_nix_copy() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let ssh = host.connect().expect("connect");
    assert_eq!(host.accepted_logins(), 1);
    for i in 0..10 {
        sh(&ssh, &format!("echo {i}"));
    }
    // More commands at once than sshd allows sessions per connection (10): they queue.
    std::thread::scope(|s| {
        for _ in 0..24 {
            s.spawn(|| assert_eq!(sh(&ssh, "sleep 0.2; echo ok"), "ok\n"));
        }
    });
    let spec = UploadSpec {
        dest: "/tmp/f".into(),
        mode: 0o644,
        owner: None,
    };
    ssh.upload(b"x", &spec).expect("upload");
    ssh.read_file("/tmp/f".as_ref()).expect("read");
    gather_facts(&ssh).expect("facts");

    // `nix copy` of a fresh tiny derivation through the master (NIX_SSHOPTS).
    let conf = nixpave_testsupport::nix_conf_dir();
    let expr = format!(
        "builtins.derivation {{ name = \"np-copy-test\"; system = \"{}-linux\"; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"echo {} > $out\" ]; }}",
        std::env::consts::ARCH,
        lab.name()
    );
    let build = std::process::Command::new("nix-build")
        .args(["--no-out-link", "-E", &expr])
        .env("NIX_CONF_DIR", conf)
        .output()
        .expect("nix-build");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let path = String::from_utf8_lossy(&build.stdout).trim().to_string();
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
        .env("NIX_CONF_DIR", conf)
        .output()
        .expect("nix copy");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    assert_eq!(host.accepted_logins(), 1, "{}", host.sshd_log());

    // The path is in the lab host's own store; removing it here leaves it there.
    let delete = std::process::Command::new("nix-store")
        .args(["--delete", &path])
        .env("NIX_CONF_DIR", conf)
        .output()
        .expect("nix-store --delete");
    assert!(
        delete.status.success(),
        "{}",
        String::from_utf8_lossy(&delete.stderr)
    );
    let here = std::process::Command::new("nix-store")
        .args(["--check-validity", &path])
        .env("NIX_CONF_DIR", conf)
        .output()
        .expect("check here");
    assert!(!here.status.success(), "not in this machine's store");
    let there = host
        .run_inside(&["nix-store", "--check-validity", &path])
        .expect("nsenter");
    assert!(
        there.status.success(),
        "{}",
        String::from_utf8_lossy(&there.stderr)
    );
    let content = host.run_inside(&["cat", &path]).expect("cat");
    assert_eq!(String::from_utf8_lossy(&content.stdout).trim(), lab.name());

    // A proof-of-login check opens a brand-new connection, on purpose.
    let fresh = ssh.run_fresh_login(&argv(&["true"])).expect("fresh login");
    assert!(fresh.success());
    assert_eq!(host.accepted_logins(), 2);
    sh(&ssh, "true");
    assert_eq!(host.accepted_logins(), 2);
}

#[test]
fn dropping_the_transport_closes_the_master() {
    let lab = Lab::up(1).expect("lab up");
    let ssh = lab.host(0).connect().expect("connect");
    let socket = ssh.control_path().to_path_buf();
    assert!(socket.exists());
    let pattern = socket.display().to_string();
    // The master answers over its control socket with its pid: the ssh process holding that socket.
    let pid = ssh.master_pid().expect("the master answers");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the master's cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&pattern),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    drop(ssh);
    assert!(!socket.exists());
    // Asked over the socket to exit (no `ssh -O exit`), it has closed its end: it is exiting or gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        assert!(Instant::now() < deadline, "the master {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .expect("pgrep");
    assert!(
        ps.stdout.is_empty(),
        "master still running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn a_vanished_master_is_reopened() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let ssh = host.connect().expect("connect");
    let stop = std::process::Command::new("ssh")
        .arg("-S")
        .arg(ssh.control_path())
        .args(["-O", "exit", "x"])
        .output()
        .expect("ssh -O exit");
    assert!(stop.status.success());
    // The master is gone once its control socket is.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ssh.control_path().exists() {
        assert!(Instant::now() < deadline, "the master never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sh(&ssh, "echo again").contains("again"));
    assert_eq!(host.accepted_logins(), 2);
}

#[test]
fn a_command_over_its_time_limit_is_stopped_on_the_host_too() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let options = SshOptions {
        command_timeout: Some(Duration::from_secs(1)),
        ..host.ssh_options()
    };
    let ssh = SshTransport::connect(&host.target(), options).expect("connect");
    let started = Instant::now();
    let err = ssh
        .run(&argv(&["sh", "-c", "sleep 47 & sleep 47; wait"]), None)
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout { seconds: 1, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("host1") && err.to_string().contains("sleep 47"));
    // Both sleeps (the whole tree) are gone on the host (soon: the kill is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = host
            .run_inside(&["sh", "-c", "ps -eo args | grep -c '^sleep 47' || true"])
            .expect("ps");
        let left = String::from_utf8_lossy(&ps.stdout).trim().to_string();
        if left == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "{left} sleeps left on the host");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection is still usable.
    assert!(sh(&ssh, "echo fine").contains("fine"));
}

#[test]
fn a_host_that_accepts_tcp_but_never_speaks_ssh_fails_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept and hold connections without ever sending a banner.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let options = SshOptions {
        connect_timeout: Duration::from_secs(2),
        known_hosts: Some("/dev/null".into()),
        ..SshOptions::default()
    };
    let target: Target = format!("root@127.0.0.1:{port}").parse().expect("target");
    let started = Instant::now();
    let err = SshTransport::connect(&target, options).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert!(matches!(err, TransportError::Connection { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// How many processes have `pattern` (a regular expression) in their command line.
fn processes_matching(pattern: &str) -> usize {
    let ps = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&ps.stdout).lines().count()
}

/// Waits until no process has `pattern` in its command line.
fn wait_gone(pattern: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_matching(pattern) > 0 {
        assert!(Instant::now() < deadline, "still running: {pattern}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_persistent_master_outlives_its_run_and_later_runs_reuse_it_without_logging_in() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let persist = SshOptions {
        persist: Some(Duration::from_secs(60)),
        ..host.ssh_options()
    };
    let connect = |options: &SshOptions| {
        SshTransport::connect(&host.target(), options.clone()).expect("connect")
    };

    let first = connect(&persist);
    assert!(!first.reused_master());
    let socket = first.control_path().to_path_buf();
    let pid = first.master_pid().expect("the master answers");
    assert_eq!(sh(&first, "echo one"), "one\n");
    drop(first);
    assert!(socket.exists(), "the master stays open for the next run");

    // Later runs, four at once: each reuses that master, and no one logs in again.
    let runs: Vec<SshTransport> = std::thread::scope(|s| {
        let started: Vec<_> = (0..4).map(|_| s.spawn(|| connect(&persist))).collect();
        started
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    for run in &runs {
        assert!(run.reused_master());
        assert_eq!(run.control_path(), socket);
        assert_eq!(run.master_pid(), Some(pid));
        assert_eq!(sh(run, "echo two"), "two\n");
    }
    assert_eq!(host.accepted_logins(), 1, "{}", host.sshd_log());
    // The proof of a magic rollback is still a brand-new login.
    assert!(runs[0]
        .run_fresh_login(&argv(&["true"]))
        .expect("fresh login")
        .success());
    assert_eq!(host.accepted_logins(), 2);
    drop(runs);

    // Other options are another connection: never a master opened with different settings.
    let other = connect(&SshOptions {
        connect_timeout: Duration::from_secs(7),
        ..persist.clone()
    });
    assert!(!other.reused_master());
    assert_ne!(other.control_path(), socket);
    assert_eq!(host.accepted_logins(), 3);
    let other_socket = other.control_path().to_path_buf();
    other.close_master();
    wait_gone(&other_socket.display().to_string());

    // A master killed hard leaves its socket behind; the next run starts a new one there.
    let kill = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    wait_gone(&format!("^ssh .*{}", socket.display()));
    assert!(socket.exists(), "a killed master cannot remove its socket");
    let again = connect(&persist);
    assert!(!again.reused_master());
    assert_ne!(again.master_pid(), Some(pid));
    assert_eq!(sh(&again, "echo three"), "three\n");
    assert_eq!(host.accepted_logins(), 4);
    again.close_master();
    wait_gone(&socket.display().to_string());
    assert!(!socket.exists());
}

#[test]
fn runs_that_open_a_persistent_master_at_once_start_only_one() {
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let persist = SshOptions {
        persist: Some(Duration::from_secs(60)),
        ..host.ssh_options()
    };
    let runs: Vec<SshTransport> = std::thread::scope(|s| {
        let started: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| SshTransport::connect(&host.target(), persist.clone()).expect("connect"))
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let opened = runs.iter().filter(|r| !r.reused_master()).count();
    assert_eq!(opened, 1, "exactly one run logs in");
    let socket = runs[0].control_path().to_path_buf();
    assert_eq!(
        processes_matching(&socket.display().to_string()),
        1,
        "one master process"
    );
    assert_eq!(host.accepted_logins(), 1, "{}", host.sshd_log());
    let mut runs = runs.into_iter();
    runs.next().expect("a run").close_master();
    wait_gone(&socket.display().to_string());
}
