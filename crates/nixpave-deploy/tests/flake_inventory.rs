//! Reading a deploy-rs-style flake with no inputs through Debian's nix 2.8, in one evaluation.

mod common;

use common::*;
use nixpave_deploy::inventory::ProfilePath;
use nixpave_deploy::{DeployOptions, Inventory, Selection};
use nixpave_nix::flake::FlakeTarget;
use nixpave_nix::invoke::NixOptions;

fn eval(selection: &Selection) -> Inventory {
    nix_conf_dir();
    let flake = FlakeTarget::parse(&fixtures().display().to_string());
    Inventory::from_flake(&flake.flake, selection, &NixOptions::default()).expect("evaluates")
}

#[test]
fn reads_deploy_nodes_with_deploy_rs_precedence() {
    let inv = eval(&Selection::default());
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    let alpha = &inv.hosts[0];
    assert_eq!(alpha.hostname, "10.0.0.1");
    assert_eq!(alpha.tags, ["web", "eu"]);
    // profilesOrder first, then the rest.
    let profiles: Vec<&str> = alpha.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(profiles, ["system", "app"]);
    let system = &alpha.profiles[0];
    assert_eq!(system.settings.confirm_timeout, 5, "profile level wins");
    assert_eq!(alpha.profiles[1].settings.confirm_timeout, 10, "node level");
    assert_eq!(
        inv.hosts[1].profiles[0].settings.confirm_timeout, 20,
        "top level"
    );
    // deploy-rs appends the outer levels' sshOpts to the inner one's: node before top.
    assert_eq!(
        system.settings.ssh_opts,
        ["-p", "2222", "-o", "ConnectTimeout=5"]
    );
    assert_eq!(system.profile_path, "/nix/var/nix/profiles/system");
    assert_eq!(
        alpha.profiles[1].profile_path,
        "/nix/var/nix/profiles/per-user/app/app"
    );
    assert!(!inv.hosts[1].profiles[0].settings.magic_rollback);
    match &system.path {
        ProfilePath::Derivation { drv_path, out_path } => {
            assert!(drv_path.ends_with(".drv") && out_path.contains("nixpave-test-system-alpha"));
        }
        other => panic!("expected a derivation, got {other:?}"),
    }
    assert_eq!(alpha.health_checks.len(), 1);
    assert_eq!(alpha.keys[0].0, "token");
    assert_eq!(alpha.keys[0].1.permissions.as_deref(), Some("0640"));
    // gamma has no profiles: its nixosConfigurations toplevel becomes the system profile.
    let gamma = &inv.hosts[2];
    assert!(gamma.profiles[0]
        .path
        .out_path()
        .contains("nixpave-test-system-gamma"));
}

#[test]
fn selects_by_tag_glob_and_fragment_inside_the_evaluation() {
    let inv = eval(&Selection::parse_on(&["@web".into()]));
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["alpha", "gamma"]);
    let inv = eval(&Selection::parse_on(&["b*".into()]));
    assert_eq!(inv.hosts.len(), 1);
    let inv = eval(
        &Selection::default()
            .with_fragment("alpha.app")
            .expect("valid"),
    );
    assert_eq!(inv.hosts.len(), 1);
    assert_eq!(inv.hosts[0].profiles.len(), 1);
    assert_eq!(inv.hosts[0].profiles[0].name, "app");
}

#[test]
fn builds_every_selected_profile_with_one_nix_build() {
    let inv = eval(&Selection::parse_on(&["beta".into(), "gamma".into()]));
    let built = nixpave_deploy::build_all(&inv.hosts, &DeployOptions::default()).expect("builds");
    assert_eq!(built, 2);
    for h in &inv.hosts {
        assert!(std::path::Path::new(h.profiles[0].path.out_path())
            .join("bin/switch-to-configuration")
            .exists());
    }
}

#[test]
fn plain_nixos_configurations_without_deploy_output() {
    nix_conf_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixtures().join("system.nix"), dir.path().join("system.nix")).expect("copy");
    std::fs::write(
        dir.path().join("flake.nix"),
        r#"{ outputs = { self }: {
  nixosConfigurations.web1.config.system.build.toplevel = import ./system.nix { tag = "web1"; };
  nixosConfigurations.web2.config.system.build.toplevel = import ./system.nix { tag = "web2"; };
}; }"#,
    )
    .expect("flake");
    let flake = FlakeTarget::parse(&format!("{}#web2", dir.path().display()));
    let selection = Selection::default()
        .with_fragment(flake.fragment.as_deref().unwrap_or(""))
        .expect("valid");
    let inv =
        Inventory::from_flake(&flake.flake, &selection, &NixOptions::default()).expect("evaluates");
    assert_eq!(inv.hosts.len(), 1);
    assert_eq!(inv.hosts[0].hostname, "web2");
    assert_eq!(inv.hosts[0].profiles[0].name, "system");
    assert!(inv.hosts[0].profiles[0]
        .path
        .out_path()
        .ends_with("nixpave-test-system-web2"));
}

#[test]
fn key_text_and_key_file_paths_come_through_the_evaluation_as_strings() {
    nix_conf_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixtures().join("system.nix"), dir.path().join("system.nix")).expect("copy");
    std::fs::write(
        dir.path().join("flake.nix"),
        r#"{ outputs = { self }: {
  deploy.nodes.k = { hostname = "k"; profiles.system.path = import ./system.nix { };
    keys.a = { text = "nixpave-secret-text-7f3a"; };
    keys.b = { keyFile = "/etc/nixpave-does-not-matter"; uploadAt = "post-activation"; }; };
}; }"#,
    )
    .expect("flake");
    let flake = FlakeTarget::parse(&dir.path().display().to_string());
    let inv = Inventory::from_flake(&flake.flake, &Selection::default(), &NixOptions::default())
        .expect("evaluates");
    let keys = &inv.hosts[0].keys;
    assert_eq!(keys[0].1.text.as_deref(), Some("nixpave-secret-text-7f3a"));
    assert_eq!(
        keys[1].1.key_file.as_deref(),
        Some("/etc/nixpave-does-not-matter")
    );
}

#[test]
fn built_profiles_stay_gc_roots_until_the_deploy_ends() {
    // A system of its own, so that no other test holds it alive meanwhile.
    nix_conf_dir();
    let cmd = |prog: &str, args: &[&str]| {
        let out = std::process::Command::new(prog)
            .args(args)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{prog}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let system = fixtures().join("system.nix").display().to_string();
    let drv = cmd(
        "nix-instantiate",
        &[&system, "--argstr", "tag", &unique("roots")],
    );
    let out = cmd("nix-store", &["--query", "--outputs", &drv]);
    let inv = Inventory::from_json(
        serde_json::json!({ "nodes": { "a": { "hostname": "h",
            "profiles": { "system": { "path": { "drv": drv, "out": out } } } } } }),
        &Selection::default(),
    )
    .expect("inventory");
    let built = nixpave_deploy::fleet::build_all_rooted(&inv.hosts, &DeployOptions::default())
        .expect("builds");
    assert_eq!(built.count, 1);
    let delete = || {
        std::process::Command::new("nix-store")
            .args(["--delete", &out])
            .output()
            .expect("nix-store runs")
    };
    // Alive while held: a garbage collection cannot take it before the push.
    let refused = delete();
    assert!(!refused.status.success(), "deleted a rooted path");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("alive"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(built);
    let deleted = delete();
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
}

#[test]
fn large_fleets_are_listed_without_evaluating_systems_then_evaluated_in_chunks() {
    nix_conf_dir();
    // Listing the nodes of a fleet larger than the limit forces no system: these would all throw.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("flake.nix"),
        r#"{ outputs = { self }: { deploy.nodes = builtins.listToAttrs (map (n: { name = n;
             value = { hostname = n; profiles.system.path = throw "system ${n} evaluated"; }; })
             [ "a" "b" "c" ]); }; }"#,
    )
    .expect("flake");
    let flake = FlakeTarget::parse(&format!("path:{}", dir.path().display()));
    let function =
        nixpave_deploy::inventory::eval_chunk_function(&Selection::default(), true, None, 2);
    let listed =
        nixpave_nix::flake::eval_flake_json(&flake.flake, &function, &NixOptions::default())
            .expect("listing forces no system");
    assert_eq!(
        listed,
        serde_json::json!({ "_nixpaveNames": ["a", "b", "c"], "_nixpaveChecks": {} })
    );

    // One node per evaluation gives the same fleet as one evaluation of all.
    let fixtures = FlakeTarget::parse(&fixtures().display().to_string());
    let whole = eval(&Selection::default());
    let heard = std::sync::Mutex::new(Vec::new());
    let chunked = Inventory::load_flake_chunked(
        &fixtures.flake,
        &Selection::default(),
        false,
        1,
        &NixOptions::default(),
        &|done, total| heard.lock().expect("lock").push((done, total)),
    )
    .expect("evaluates in chunks");
    // Progress: once the nodes are listed, then after every chunk (here one node each).
    let n = whole.hosts.len();
    let expected: Vec<(usize, usize)> = (0..=n).map(|done| (done, n)).collect();
    assert_eq!(heard.into_inner().expect("lock"), expected);
    assert_eq!(
        serde_json::to_value(&chunked.hosts).expect("json"),
        serde_json::to_value(&whole.hosts).expect("json")
    );
    assert_eq!(chunked.checks, whole.checks);
}

#[test]
fn a_chunk_that_fails_to_evaluate_counts_against_max_failures() {
    // One node per evaluation, one host at a time, stop after one failure: the first node does not evaluate,
    // so it fails and the rollout stops before the others start (nothing is deployed: no connection is made).
    nix_conf_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("flake.nix"),
        r#"{ outputs = { self }: { deploy.rollout = { parallel = 1; maxFailures = 1; };
             deploy.nodes = builtins.listToAttrs (map (n: { name = n;
             value = { hostname = n; profiles.system.path = if n == "a" then throw "a is broken" else "/nix/store/x"; }; })
             [ "a" "b" "c" ]); }; }"#,
    )
    .expect("flake");
    let flake = format!("path:{}", dir.path().display());
    let listed = match Inventory::list_flake(
        &flake,
        &Selection::default(),
        false,
        1,
        &NixOptions::default(),
    )
    .expect("listed")
    {
        nixpave_deploy::inventory::Listing::Listed(listed) => listed,
        other => panic!("listed: {other:?}"),
    };
    // The rollout settings come with the listing, before any node is evaluated.
    assert_eq!(listed.top.rollout.max_failures, Some(1));
    assert_eq!(listed.names, ["a", "b", "c"]);
    let done = nixpave_deploy::pipeline::deploy_listed(
        &listed,
        &|_| {},
        &nixpave_deploy::LocalConnector::default(),
        &DeployOptions::default(),
        &listed.top.rollout,
        &|_| {},
        &|_, _| {},
    );
    let outcomes: Vec<_> = done.report.hosts.iter().map(|r| r.outcome).collect();
    use nixpave_deploy::Outcome::*;
    assert_eq!(
        outcomes,
        [Failed, Skipped, Skipped],
        "{:?}",
        done.report.hosts
    );
    assert!(
        done.report.hosts[0].message.contains("a is broken"),
        "{}",
        done.report.hosts[0].message
    );
}
