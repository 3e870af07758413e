//! nixpave-nix against the real nix first on `PATH`: Debian 12's 2.8 normally, current Nix (2.26) in the
//! second pass of `scripts/test.sh` (`NIXPAVE_TEST_NIX=2.26`, which these tests check).

use std::path::Path;
use std::process::Command;

use nixpave_nix::build::{build_derivations, root_valid_paths};
use nixpave_nix::copy::{copy_closure, CopyTo};
use nixpave_nix::flake::{eval_flake_json, flake_nix_config};
use nixpave_nix::invoke::NixOptions;
use nixpave_nix::{eval_file, eval_flake_attr, local_version, NixVersion};

use nixpave_testsupport::{nix_conf_dir as conf, unique};

/// Instantiates a derivation with outputs `out` and `dev` into the store.
fn instantiate(dir: &Path, tag: &str) -> String {
    let file = dir.join("two.nix");
    std::fs::write(
        &file,
        format!(
            r#"builtins.derivation {{ name = "nixpave-two-{tag}"; system = "x86_64-linux"; builder = "/bin/sh";
                outputs = [ "out" "dev" ]; args = [ "-c" "echo {tag} > $out; echo dev > $dev" ]; }}"#
        ),
    )
    .expect("write");
    nixpave_testsupport::nix_instantiate(&file, &[]).0
}

#[test]
fn detects_the_version_that_the_pass_asks_for() {
    conf();
    let v = local_version(&NixOptions::default()).expect("nix --version");
    match std::env::var("NIXPAVE_TEST_NIX")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(expected) => assert!(
            v.to_string().starts_with(&format!("{expected}.")),
            "NIXPAVE_TEST_NIX={expected} but nix is {v}"
        ),
        None => assert!(v >= NixVersion::new(2, 8, 0), "{v}"),
    }
    // Cached: the same answer without running nix again (a PATH without nix would fail otherwise).
    let again = local_version(&NixOptions::default()).expect("cached");
    assert_eq!(v, again);
    // Another PATH is asked separately; one without nix is a typed spawn error, not a guess.
    let nowhere = NixOptions {
        env: vec![("PATH".into(), "/nonexistent".into())],
        ..NixOptions::default()
    };
    let err = local_version(&nowhere).unwrap_err().to_string();
    assert!(
        err.contains("nix --version") && err.contains("is nix installed"),
        "{err}"
    );
}

#[test]
fn builds_every_output_of_derivations_with_this_nix() {
    conf();
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique("b");
    let drv = instantiate(dir.path(), &tag);
    let built =
        build_derivations(std::slice::from_ref(&drv), &NixOptions::default()).expect("nix build");
    let out = &built[&drv];
    assert!(out.ends_with(&format!("nixpave-two-{tag}")), "{out}");
    assert_eq!(std::fs::read_to_string(out).expect("out").trim(), tag);
    // Both outputs were built (DRV^* on current nix, the bare .drv on 2.8).
    let outputs = Command::new("nix-store")
        .args(["-q", "--outputs", &drv])
        .output()
        .expect("nix-store -q --outputs");
    let outputs = String::from_utf8_lossy(&outputs.stdout).into_owned();
    let dev = outputs
        .lines()
        .find(|l| l.ends_with("-dev"))
        .expect("a dev output")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(&dev)
            .expect("dev output built")
            .trim(),
        "dev"
    );
    // Built again: already valid, same answer.
    let again =
        build_derivations(std::slice::from_ref(&drv), &NixOptions::default()).expect("again");
    assert_eq!(&again[&drv], out);
}

fn outputs_of(drv: &str) -> Vec<String> {
    let out = Command::new("nix-store")
        .args(["-q", "--outputs", drv])
        .output()
        .expect("nix-store -q --outputs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn valid(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .output()
        .expect("nix-store --check-validity")
        .status
        .success()
}

#[test]
fn roots_valid_paths_without_building_and_refuses_invalid_ones() {
    conf();
    let dir = tempfile::tempdir().expect("tempdir");
    let built_drv = instantiate(dir.path(), &unique("r"));
    build_derivations(std::slice::from_ref(&built_drv), &NixOptions::default()).expect("build");
    let outs = outputs_of(&built_drv);
    let link = dir.path().join("valid");
    root_valid_paths(&outs, &NixOptions::default(), &link).expect("roots valid paths");
    // One indirect root per path, each a GC root nix knows about.
    for (i, out) in outs.iter().enumerate() {
        let name = if i == 0 {
            link.clone()
        } else {
            dir.path().join(format!("valid-{}", i + 1))
        };
        assert_eq!(
            std::fs::read_link(&name).expect("root link"),
            Path::new(out)
        );
        let roots = Command::new("nix-store")
            .args(["-q", "--roots", out])
            .output()
            .expect("nix-store -q --roots");
        assert!(
            String::from_utf8_lossy(&roots.stdout).contains(&name.display().to_string()),
            "{} is not a root of {out}",
            name.display()
        );
    }
    // A path that was never built: an error, and nothing is built behind the caller's back.
    let other = tempfile::tempdir().expect("tempdir");
    let unbuilt = outputs_of(&instantiate(other.path(), &unique("u")));
    assert!(root_valid_paths(&unbuilt, &NixOptions::default(), &other.path().join("v")).is_err());
    assert!(unbuilt.iter().all(|p| !valid(p)), "{unbuilt:?} got built");
}

/// A derivation that fails after its builder printed 30 lines, the last to stderr, and depends on one that
/// builds (first: nix 2.8 ends the finished build's activity only with the whole run). Returns its `.drv`.
fn instantiate_failing(dir: &Path, tag: &str) -> String {
    let file = dir.join("fail.nix");
    std::fs::write(
        &file,
        format!(
            r#"let ok = builtins.derivation {{ name = "nixpave-fail-dep-{tag}"; system = "x86_64-linux"; builder = "/bin/sh";
                    args = [ "-c" "echo dependency built; echo ok > $out" ]; }};
               in builtins.derivation {{ name = "nixpave-fail-{tag}"; system = "x86_64-linux"; builder = "/bin/sh"; inherit ok;
                    args = [ "-c" "i=1; while [ $i -le 29 ]; do echo line $i; i=$((i+1)); done; echo 'build failed on purpose: 42' >&2; exit 3" ]; }}"#
        ),
    )
    .expect("write");
    nixpave_testsupport::nix_instantiate(&file, &[]).0
}

#[test]
fn a_failing_build_is_a_typed_error_with_its_log_tail() {
    conf();
    let dir = tempfile::tempdir().expect("tempdir");
    let links = tempfile::tempdir().expect("tempdir");
    for streaming in [false, true] {
        let drv = instantiate_failing(dir.path(), &unique("f"));
        let mut heard = Vec::new();
        let err = if streaming {
            nixpave_nix::build::build_derivations_streaming(
                std::slice::from_ref(&drv),
                &NixOptions::default(),
                &links.path().join("result"),
                &mut |e| heard.push(e),
            )
        } else {
            build_derivations(std::slice::from_ref(&drv), &NixOptions::default())
        }
        .unwrap_err();
        let nixpave_nix::invoke::NixError::Failed {
            command,
            stderr,
            builds,
            ..
        } = &err
        else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(
            command.starts_with("nix ") && command.contains("build"),
            "{command}"
        );
        // nix's own error, without terminal escapes, names the derivation.
        assert!(
            stderr.contains(&format!("builder for '{drv}' failed with exit code 3"))
                && !stderr.contains('\u{1b}'),
            "{stderr}"
        );
        // Only the failed build's log (the dependency was built), its last 20 lines.
        assert_eq!(builds.len(), 1, "{builds:?}");
        assert_eq!(builds[0].drv, drv);
        assert_eq!(builds[0].lines.len(), 20, "{builds:?}");
        assert_eq!(builds[0].earlier, 10, "{builds:?}");
        assert_eq!(builds[0].lines[0], "line 11");
        assert_eq!(
            builds[0].lines.last().map(String::as_str),
            Some("build failed on purpose: 42")
        );
        // The message shows it, named.
        let shown = err.to_string();
        assert!(
            shown.contains(&format!(
                "last 20 log lines of the build of {drv}:\n> line 11\n"
            )) && shown.ends_with("> build failed on purpose: 42")
                && !shown.contains("dependency built"),
            "{shown}"
        );
        // The events a progress view hears carry no log lines.
        assert!(
            !heard.iter().any(|e| format!("{e:?}").contains("line 1")),
            "{heard:?}"
        );
    }
}

#[test]
fn evaluates_files_and_path_flakes() {
    conf();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("layout.nix");
    std::fs::write(&file, r#"{ lib, disk ? "/dev/vda" }: { disko.devices.disk.main = lib.mkDefault { device = disk; type = "disk"; }; }"#)
        .expect("write");
    let v = eval_file(
        &file,
        &[nixpave_nix::NixArg::Str {
            name: "disk".into(),
            value: "/dev/sdz".into(),
        }],
    )
    .expect("nix-instantiate --eval --strict --json");
    assert_eq!(v["disko"]["devices"]["disk"]["main"]["device"], "/dev/sdz");

    std::fs::write(
        dir.path().join("flake.nix"),
        r#"{ outputs = { self }: { diskoConfigurations.x = { disk.a.device = "/dev/vdb"; }; value = 41; }; }"#,
    )
    .expect("flake");
    let flake = dir.path().to_string_lossy().into_owned();
    let v = eval_flake_attr(&flake, "diskoConfigurations.x", None).expect("nix eval");
    assert_eq!(v["disk"]["a"]["device"], "/dev/vdb");
    let v = eval_flake_json(
        &format!("path:{flake}"),
        "f: f.value + 1",
        &NixOptions::default(),
    )
    .expect("builtins.getFlake of a path: flake");
    assert_eq!(v, 42);
}

#[test]
fn copies_a_closure_to_a_local_store() {
    conf();
    let dir = tempfile::tempdir().expect("tempdir");
    let drv = instantiate(dir.path(), &unique("c"));
    let built =
        build_derivations(std::slice::from_ref(&drv), &NixOptions::default()).expect("build");
    let out = built[&drv].clone();
    let store = dir.path().join("other-store");
    let to = CopyTo {
        store_uri: format!("local?root={}", store.display()),
        ssh_opts: String::new(),
        substitute_on_destination: false,
    };
    // A local store checks signatures (an ssh:// store does not; the deploy tests push over ssh).
    let opts = NixOptions {
        extra_args: vec!["--no-check-sigs".into()],
        ..NixOptions::default()
    };
    copy_closure(&to, std::slice::from_ref(&out), &opts).expect("nix copy");
    assert!(
        store.join(out.trim_start_matches('/')).exists(),
        "{out} not in {}",
        store.display()
    );
}

#[test]
fn a_flake_in_a_git_work_tree_is_read_as_nix_reads_it_untracked_files_stay_out() {
    conf();
    let repo = tempfile::tempdir().expect("tempdir");
    let dir = repo.path().join("infra");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("flake.nix"),
        "{ outputs = { self }: { secretSeen = builtins.pathExists ./secret; \
         trackedSeen = builtins.pathExists ./tracked; }; }",
    )
    .expect("flake");
    std::fs::write(dir.join("tracked"), "ok").expect("tracked");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(repo.path())
            .args(args)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "infra/flake.nix", "infra/tracked"]);
    git(&["commit", "-q", "-m", "fleet"]);
    // A secret dropped beside the flake and never added to git.
    std::fs::write(dir.join("secret"), "hunter2").expect("secret");

    let target = nixpave_nix::flake::FlakeTarget::parse(&dir.display().to_string());
    assert!(target.flake.starts_with("git+file://"), "{}", target.flake);
    let seen = eval_flake_json(
        &target.flake,
        "f: [ f.secretSeen f.trackedSeen ]",
        &NixOptions::default(),
    )
    .expect("evaluates");
    assert_eq!(seen, serde_json::json!([false, true]), "{}", target.flake);
    // `path:` only when the user writes it: then the whole directory is read.
    let seen = eval_flake_json(
        &format!("path:{}", dir.display()),
        "f: f.secretSeen",
        &NixOptions::default(),
    )
    .expect("evaluates");
    assert_eq!(seen, serde_json::json!(true));
}

#[test]
fn reads_a_flake_s_nix_config_also_from_a_subdirectory() {
    conf();
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("infra");
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(
        sub.join("flake.nix"),
        r#"{
  nixConfig = {
    extra-substituters = [ "https://cache.example.org" "file:///srv/cache" ];
    extra-trusted-public-keys = [ "cache.example.org-1:AAAA=" ];
    accept-flake-config = true;
  };
  outputs = { self }: { };
}"#,
    )
    .expect("flake.nix");
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = { self }: { }; }")
        .expect("flake.nix");
    let opts = NixOptions::default();
    let got = flake_nix_config(&format!("path:{}", sub.display()), &opts).expect("nixConfig");
    assert_eq!(
        got,
        vec![
            ("accept-flake-config".to_string(), "true".to_string()),
            (
                "extra-substituters".to_string(),
                "https://cache.example.org file:///srv/cache".to_string()
            ),
            (
                "extra-trusted-public-keys".to_string(),
                "cache.example.org-1:AAAA=".to_string()
            ),
        ]
    );
    // In a git work tree (`git+file://TOP?dir=infra`): the subdirectory's flake.nix, not the top one; a
    // flake without nixConfig gives nothing.
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .status()
            .expect("git");
        assert!(ok.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "flake.nix", "infra/flake.nix"]);
    let top = format!("git+file://{}", dir.path().display());
    assert_eq!(
        flake_nix_config(&format!("{top}?dir=infra"), &opts)
            .expect("nixConfig")
            .len(),
        3
    );
    assert!(flake_nix_config(&top, &opts).expect("nixConfig").is_empty());
}
