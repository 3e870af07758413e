//! Snapshots of what people see: `--help` of the fleet commands, a disk plan, and usage errors (exit codes
//! included). A change in any of them shows up in review as a snapshot diff.
//!
//! The result tables have snapshots of their own: `deploy`'s and `rollback`'s and `status`'s from
//! fixed reports next to their renderers (`src/cmd/deploy/{render,status}.rs`), `exec`'s from the
//! real binary against lab hosts (`remote_cli.rs`).

use std::process::Command;

fn nixpave(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(args)
        // The same rendering wherever the tests run (a terminal, CI): width, no colour, unicode.
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .env("TERM", "xterm")
        .env("LANG", "C.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_CTYPE")
        .env_remove("NIXPAVE_LAB_DIR")
        .output()
        .expect("nixpave runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_of_the_fleet_commands() {
    for cmd in [
        &["deploy", "--help"][..],
        &["status", "--help"],
        &["rollback", "--help"],
        &["exec", "--help"],
        &["facts", "--help"],
        &["install", "--help"],
        &["disk", "apply", "--help"],
        &["lab", "up", "--help"],
        &["completions", "--help"],
        &["init", "--help"],
    ] {
        let (code, stdout, _) = nixpave(cmd);
        assert_eq!(code, Some(0));
        insta::assert_snapshot!(format!("help-{}", cmd[..cmd.len() - 1].join("-")), stdout);
    }
}

/// The top level: the global `-q/--quiet` and `--color` flags and every command, `init` included.
#[test]
fn help_of_the_top_level() {
    let (code, stdout, _) = nixpave(&["--help"]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!("help-top", stdout);
}

#[test]
fn usage_errors_name_the_problem_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("flake.nix"),
        "{ outputs = { self }: { deploy.nodes.a = { hostname = \"a\"; profiles.system.path = \"/nix/store/x\"; }; }; }",
    )
    .expect("flake");
    let flake = dir.path().display().to_string();
    let (code, _, stderr) = nixpave(&["deploy", &format!("{flake}#web1.example.com.system")]);
    assert_eq!(code, Some(2));
    insta::assert_snapshot!(
        "error-unquoted-dotted-node",
        stderr.replace(&flake, "FLAKE")
    );
    let (code, _, stderr) = nixpave(&["deploy", &flake, "--ssh-opts", "-o 'unclosed"]);
    assert_eq!(code, Some(2));
    insta::assert_snapshot!("error-ssh-opts-quotes", stderr.replace(&flake, "FLAKE"));
}

#[test]
fn disk_plan_of_the_server_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/server.nix");
    let (code, stdout, stderr) = nixpave(&["disk", "plan", example]);
    assert_eq!(code, Some(0), "{stderr}");
    insta::assert_snapshot!("disk-plan-server", stdout);
}

/// Runs nixpave under a pseudo-terminal (util-linux `script`), so `--color auto` sees a terminal.
fn in_terminal(args: &str, no_color: Option<&str>) -> String {
    let mut cmd = Command::new("script");
    cmd.args([
        "-qec",
        &format!("{} {args}", env!("CARGO_BIN_EXE_nixpave")),
        "/dev/null",
    ])
    .env("COLUMNS", "100")
    .env("TERM", "xterm")
    .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("script runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn color_follows_the_flag_no_color_and_the_terminal() {
    // A usage error from init (the name is checked before any connection).
    let args = ["init", "web.1", "--target", "root@192.0.2.1"];
    let (code, _, never) = nixpave(&[&["--color", "never"][..], &args].concat());
    assert_eq!(code, Some(2));
    assert!(!never.contains('\x1b'), "{never:?}");
    insta::assert_snapshot!("error-init-bad-name", never);
    // `always` colours even into a pipe and even with NO_COLOR (set by `nixpave()`).
    let (_, _, always) = nixpave(&[&["--color", "always"][..], &args].concat());
    assert!(always.contains("\x1b["), "{always:?}");
    // `auto`: a terminal gets colour, unless NO_COLOR is set to something.
    let args = args.join(" ");
    let tty = in_terminal(&args, None);
    assert!(tty.contains("\x1b["), "{tty:?}");
    let tty = in_terminal(&args, Some("1"));
    assert!(tty.contains("web.1") && !tty.contains("\x1b["), "{tty:?}");
    let tty = in_terminal(&args, Some(""));
    assert!(
        tty.contains("\x1b["),
        "an empty NO_COLOR does not count: {tty:?}"
    );
}

#[test]
fn quiet_drops_informational_messages_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let man = dir.path().join("man");
    let (code, _, stderr) = nixpave(&["-q", "man", man.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert_eq!(stderr, "");
    assert!(man.join("nixpave-init.1").exists());
    let (_, _, stderr) = nixpave(&["man", man.to_str().unwrap()]);
    assert!(stderr.contains("man page(s)"), "{stderr}");
    // Errors are still printed with -q.
    let (code, _, stderr) = nixpave(&["init", "-q", "web.1", "--target", "root@192.0.2.1"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not a usable node name"), "{stderr}");
}

/// Every command reached by walking `--help`, as its words (`["lab", "vm", "up"]`).
fn leaf_commands(path: Vec<String>, out: &mut Vec<Vec<String>>) {
    let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
    let (code, stdout, _) = nixpave(&args);
    assert_eq!(code, Some(0), "{args:?}");
    let subs: Vec<String> = stdout
        .split("Commands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| !l.trim().is_empty())
                .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .filter(|w| w != "help")
                .collect()
        })
        .unwrap_or_default();
    if subs.is_empty() {
        out.push(path);
        return;
    }
    for sub in subs {
        let mut p = path.clone();
        p.push(sub);
        leaf_commands(p, out);
    }
}

/// `--json` wherever nixpave prints a table or a report; the commands without it print no table.
#[test]
fn every_command_that_reports_has_json() {
    // Commands that print no table: a script, pages, an interactive shell, a log, a removal message.
    const NO_TABLE: &[&str] = &[
        "completions",
        "man",
        "lab ssh",
        "lab down",
        "lab vm down",
        "lab vm console",
        "lab vm ssh",
    ];
    let mut leaves = Vec::new();
    leaf_commands(Vec::new(), &mut leaves);
    assert!(leaves.len() >= 20, "{leaves:?}");
    let mut without = Vec::new();
    for leaf in &leaves {
        let name = leaf.join(" ");
        let args: Vec<&str> = leaf.iter().map(String::as_str).chain(["--help"]).collect();
        let (_, stdout, _) = nixpave(&args);
        if !stdout.contains("--json") && !NO_TABLE.contains(&name.as_str()) {
            without.push(name);
        }
    }
    assert!(without.is_empty(), "commands without --json: {without:?}");
}
