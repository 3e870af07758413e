//! Snapshots of what people see: `--help` of the fleet commands, a disk plan, and usage errors (exit codes
//! included). A change in any of them shows up in review as a snapshot diff.

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
    ] {
        let (code, stdout, _) = nixpave(cmd);
        assert_eq!(code, Some(0));
        insta::assert_snapshot!(format!("help-{}", cmd[..cmd.len() - 1].join("-")), stdout);
    }
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
