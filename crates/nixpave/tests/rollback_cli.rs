//! `nixpave rollback` survives Ctrl-C as `nixpave deploy` does: the rollback runs detached on the host, the
//! interrupted command exits 130 and the host still ends on the previous generation.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nixpave_lab::testing::Lab;

fn write_flake(dir: &Path, tag: &str, delay: u32) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixpave-deploy/tests/fixtures");
    std::fs::copy(fixtures.join("system.nix"), dir.join("system.nix")).expect("copy fixture");
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: {{
  deploy.nodes.host1 = {{ hostname = "host1"; profiles.system.path = import ./system.nix {{ tag = "{tag}"; delay = "{delay}"; }}; }};
}}; }}"#
        ),
    )
    .expect("flake");
}

use nixpave_testsupport::output_text as text;

#[test]
fn ctrl_c_during_rollback_leaves_the_rollback_running_on_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = nixpave_testsupport::write_nix_conf(&dir.path().join("nixconf"));
    let flake = dir.path().join("flake");
    std::fs::create_dir_all(&flake).expect("flake dir");
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let nixpave = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixpave"));
        cmd.args(args)
            .arg(&flake)
            .args(["--lab", lab.name()])
            .env("NIXPAVE_LAB_DIR", lab.base_dir())
            .env("NIX_CONF_DIR", &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let tag = format!("rbint-{}", std::process::id());
    // Every activation (and so re-activating v1 during the rollback) takes 3 s.
    write_flake(&flake, &format!("{tag}-v1"), 3);
    let out = nixpave(&["deploy"]).output().expect("deploy");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    write_flake(&flake, &format!("{tag}-v2"), 0);
    let out = nixpave(&["deploy"]).output().expect("deploy");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        host.sh("cat /nix/var/nixpave-test/current"),
        format!("{tag}-v2")
    );

    let child = nixpave(&["rollback"]).spawn().expect("rollback runs");
    let record = "/nix/var/nixpave/deploy/system.json";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !host
        .sh(&format!("cat {record}"))
        .contains("\"reason\":\"manual-rollback\"")
    {
        assert!(Instant::now() < deadline, "the rollback never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGINT while v1's activation (3 s) runs.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let out = child.wait_with_output().expect("rollback exits");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        host.sh(&format!("cat {record}"))
            .contains("\"state\":\"activating\""),
        "Ctrl-C came before the rollback finished"
    );

    // The host finishes the rollback by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host
        .sh(&format!("cat {record}"))
        .contains("\"state\":\"rolled-back\"")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            host.sh(&format!("cat {record}"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        host.sh("cat /nix/var/nixpave-test/current"),
        format!("{tag}-v1")
    );
    let out = nixpave(&["status", "--json"]).output().expect("status");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(rows[0]["profiles"][0]["generation"], 1, "{rows}");
}
