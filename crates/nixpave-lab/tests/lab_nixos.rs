//! NixOS-shaped lab hosts: no tools at FHS paths, everything in `/run/current-system/sw/bin`, nix only in
//! the default profile, sudo in `/run/wrappers/bin`, NixOS's session PATH, and still a working sshd and nix.

use std::process::{Command, Output, Stdio};

use nixpave_lab::hosts::{Flavour, LabUser, SESSION_PATH};
use nixpave_lab::testing::{Lab, LabHost, LabOptions};
use nixpave_remote::{gather_facts, SshTransport, Transport, TARGET_PATH};

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// `command` through a plain `ssh` login (the session's own PATH, no nixpave wrapping).
fn ssh(lab: &Lab, host: &LabHost, command: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg(lab.ssh_config_path())
        .args(["-o", "BatchMode=yes", host.name(), command])
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn nixos_shaped_host_has_no_fhs_tools_and_still_runs_sshd_and_nix() {
    let lab = Lab::up_nixos(1).expect("lab up");
    let host = lab.host(0);
    assert_eq!(host.flavour(), Flavour::Nixos);

    // The session: NixOS's PATH, tools from the system profile, nix from the default profile.
    assert_eq!(stdout(&ssh(&lab, host, "echo \"$PATH\"")), SESSION_PATH);
    assert_eq!(stdout(&ssh(&lab, host, "ls /usr/bin")), "bash\nenv\nsh");
    assert_eq!(stdout(&ssh(&lab, host, "ls /bin")), "bash\nenv\nsh");
    // `sh` is bash in its POSIX mode, as on NixOS.
    assert_eq!(
        stdout(&ssh(
            &lab,
            host,
            "/bin/sh -c 'echo ${BASH_VERSION:+bash}; case :$SHELLOPTS: in *:posix:*) echo posix;; esac'"
        )),
        "bash\nposix"
    );
    assert_eq!(
        stdout(&ssh(&lab, host, "ls /usr/sbin /sbin")),
        "/sbin:\n\n/usr/sbin:"
    );
    assert_eq!(
        stdout(&ssh(
            &lab,
            host,
            "command -v ln; command -v ip; command -v nix-store; command -v sudo"
        )),
        "/run/current-system/sw/bin/ln\n/run/current-system/sw/bin/ip\n\
         /nix/var/nix/profiles/default/bin/nix-store\n/run/wrappers/bin/sudo"
    );
    assert!(stdout(&ssh(&lab, host, "ln --version")).contains("coreutils"));
    // Alternatives resolved: awk works although /etc/alternatives/awk points into the hidden /usr/bin.
    assert_eq!(stdout(&ssh(&lab, host, "echo 1 2 | awk '{print $2}'")), "2");
    // What the agent would meet without a PATH of its own: no FHS tools at all.
    let bare = ssh(&lab, host, "env -i /bin/sh -c 'ln --version'");
    assert_eq!(bare.status.code(), Some(127), "{bare:?}");
    assert!(String::from_utf8_lossy(&bare.stderr).contains("not found"));
    let fhs = ssh(&lab, host, "/usr/bin/readlink --version");
    assert!(!fhs.status.success(), "{fhs:?}");

    // nix builds with /bin/sh as the builder, under NixOS's PATH.
    let built = stdout(&ssh(
        &lab,
        host,
        "nix-build --no-out-link -E 'derivation { name = \"nixos-shaped\"; \
         system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo built > $out\" ]; }' \
         | xargs cat",
    ));
    assert_eq!(built, "built");

    // Root inside without ssh gets the same layout.
    let inside = host
        .run_inside(&["sh", "-c", "command -v readlink; ls /usr/bin | wc -l"])
        .expect("nsenter");
    assert_eq!(stdout(&inside), "/run/current-system/sw/bin/readlink\n3");

    // nixpave's transport does not depend on the session alone: every command has TARGET_PATH after it.
    let t = host.connect().expect("connect");
    let out = t
        .run(
            &argv(&["sh", "-c", "echo \"$PATH\"; ln --version | head -n1"]),
            None,
        )
        .expect("run");
    assert!(out.success(), "{}", out.stderr_tail(5));
    let path = out
        .stdout_str()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(path.ends_with(TARGET_PATH), "{path}");
    // An honest report: Debian's os-release, nix found in the default profile.
    let facts = gather_facts(&t).expect("facts");
    assert_eq!(facts.os.id, "debian");
    assert!(!facts.os.is_nixos);
    assert!(facts.lab_host);
    assert!(facts.is_root);
    assert!(facts
        .nix_version
        .as_deref()
        .is_some_and(|v| v.contains("Nix")));
    assert_eq!(
        facts.nix_path.as_deref(),
        Some("/nix/var/nix/profiles/default/bin/nix")
    );
    assert_eq!(facts.escalation_tools, ["sudo"]);

    // A Debian host of another lab still has its FHS layout (the shape is per lab, not machine-wide).
    let debian = Lab::up(1).expect("debian lab up");
    assert_eq!(debian.host(0).flavour(), Flavour::Debian);
    let out = ssh(
        &debian,
        debian.host(0),
        "command -v ln; ls /usr/bin | wc -l",
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("/usr/bin/ln\n") || text.starts_with("/bin/ln\n"),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            > 100
    );
}

#[test]
fn sudo_on_a_nixos_shaped_host_comes_from_run_wrappers() {
    let lab = Lab::with(LabOptions {
        hosts: 1,
        users: vec![LabUser {
            name: "alice".into(),
            sudo_password: None,
        }],
        flavour: Flavour::Nixos,
        ..LabOptions::default()
    })
    .expect("lab up");
    let host = lab.host(0);
    let ssh = SshTransport::connect(&host.target_as("alice"), host.ssh_options()).expect("alice");
    let out = ssh
        .run(
            &argv(&["sh", "-c", "id -un; command -v sudo; command -v readlink"]),
            None,
        )
        .expect("id");
    assert!(out.success(), "{}", out.stderr_tail(5));
    assert_eq!(
        out.stdout_str().trim(),
        "root\n/run/wrappers/bin/sudo\n/run/current-system/sw/bin/readlink"
    );
    // `nix copy` as alice: `sudo -n nix-store --serve` found through NixOS's session PATH.
    let conf = nixpave_testsupport::nix_conf_dir();
    let file = lab.dir().join(format!("{}-nixos-copy", lab.name()));
    std::fs::write(&file, "copied to a NixOS-shaped host").expect("write");
    let added = Command::new("nix-store")
        .arg("--add")
        .arg(&file)
        .env("NIX_CONF_DIR", conf)
        .output()
        .expect("nix-store --add");
    let path = stdout(&added);
    let copy = Command::new("nix")
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
    stdout(&copy);
    let valid = host
        .run_inside(&["nix-store", "--check-validity", &path])
        .expect("nsenter");
    assert!(valid.status.success(), "{valid:?}");
}
