//! A deploy-rs user's flake, deployed unchanged by `nixpave deploy` to real lab hosts: nodes reached only
//! through `sshOpts = [ "-F" ssh_config ]` (no `--lab`, no inventory: the node hostnames are ssh_config
//! aliases), `-J` through a jump host, quoted node names with dots, checks built first, and the fresh,
//! no-op, failing, hanging and network-cutting releases of the held-out check.
//!
//! The flake lives in `tests/fixtures/deploy-rs-fleet`; each test copies it with the stand-in system
//! (`nixpave-deploy/tests/fixtures/system.nix`) and writes `fleet.json` beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nixpave_lab::testing::{Lab, LabHost};

/// Where lab hosts keep status records: they share this machine's /var, not its /nix.
const STATE_DIR: &str = "/nix/var/nixpave/deploy";

struct Fleet {
    lab: Lab,
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Fleet {
    fn new(hosts: usize) -> Fleet {
        Self::on(Lab::up(hosts).expect("lab up"))
    }

    fn on(lab: Lab) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for f in ["flake.nix", "activate.nix"] {
            std::fs::copy(fixtures.join("deploy-rs-fleet").join(f), dir.path().join(f))
                .expect("copy flake");
        }
        std::fs::copy(
            fixtures.join("../../../nixpave-deploy/tests/fixtures/system.nix"),
            dir.path().join("system.nix"),
        )
        .expect("copy system");
        let conf = nixpave_testsupport::write_nix_conf(&dir.path().join("nixconf"));
        Fleet { lab, dir, conf }
    }

    /// Writes fleet.json: `hosts` maps node names to `{hostname?, sshOpts?, break?}`.
    fn write(&self, release: &str, hosts: serde_json::Value, fail_check: bool) {
        let interfaces: serde_json::Map<String, serde_json::Value> = self
            .lab
            .hosts()
            .iter()
            .map(|h| (h.name().to_string(), h.interface().into()))
            .collect();
        let fleet = serde_json::json!({
            "sshConfig": self.lab.ssh_config_path(),
            "release": format!("{release}-{}", std::process::id()),
            "hosts": hosts,
            "interfaces": interfaces,
            "failCheck": fail_check,
        });
        std::fs::write(self.dir.path().join("fleet.json"), fleet.to_string()).expect("fleet.json");
    }

    /// `nixpave ARGS…` as a user runs it: no lab directory, no inventory, nothing but the flake.
    fn nixpave(&self, args: &[&str]) -> Output {
        self.nixpave_with(args, &[])
    }

    /// [`nixpave`](Self::nixpave) with more environment variables.
    fn nixpave_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_nixpave"))
            .args(args)
            .envs(env.iter().copied())
            .env("NIX_CONF_DIR", &self.conf)
            .env_remove("NIXPAVE_LAB_DIR")
            // Logins are counted: a developer's kept connections must not carry over.
            .env_remove("NIXPAVE_SSH_PERSIST")
            .stdin(Stdio::null())
            .output()
            .expect("nixpave runs")
    }

    fn flake(&self, fragment: &str) -> String {
        format!("{}{fragment}", self.dir.path().display())
    }
}

fn current_release(h: &LabHost) -> String {
    h.sh("cat /nix/var/nixpave-test/current 2>/dev/null")
}

use nixpave_testsupport::output_text as text;

fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn outcomes(report: &serde_json::Value) -> Vec<(String, String)> {
    report["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap_or_default().to_string(),
                h["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn all_hosts(lab: &Lab) -> serde_json::Value {
    lab.hosts()
        .iter()
        .map(|h| (h.name().to_string(), serde_json::json!({})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn deploy_rs_flake_with_ssh_config_fresh_noop_and_failing_releases_on_five_hosts() {
    let fleet = Fleet::new(5);
    let flake = fleet.flake("");
    let deploy = |extra: &[&str]| {
        let mut args = vec!["deploy", &flake, "--state-dir", STATE_DIR, "--json"];
        args.extend(extra);
        fleet.nixpave(&args)
    };

    // The flake's check fails: nothing is deployed, and the error says how to skip checks.
    fleet.write("v1", all_hosts(&fleet.lab), true);
    let out = deploy(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--skip-checks"), "{}", text(&out));
    assert!(
        text(&out).contains("schema check failed on purpose"),
        "{}",
        text(&out)
    );
    for h in fleet.lab.hosts() {
        assert_eq!(h.accepted_logins(), 0, "{} was contacted", h.name());
    }

    // Fresh deploy, the hosts known only through the flake's `-F` ssh_config; host5 builds its own system
    // (`remoteBuild`).
    let mut hosts = all_hosts(&fleet.lab);
    hosts["host5"] = serde_json::json!({ "remoteBuild": true });
    fleet.write("v1", hosts.clone(), false);
    let out = deploy(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let names: Vec<String> = fleet.lab.hosts().iter().map(|h| h.name().into()).collect();
    let want: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.clone(), "deployed".to_string()))
        .collect();
    assert_eq!(outcomes(&report(&out)), want);
    let v1 = format!("v1-{}", std::process::id());
    for h in fleet.lab.hosts() {
        assert_eq!(current_release(h), v1, "{}", h.name());
        // deploy-rs-activate ran switch-to-configuration through $PROFILE.
        assert!(
            h.sh("cat /nix/var/nixpave-test/activations")
                .contains(&format!("{v1} switch")),
            "{}",
            h.name()
        );
    }

    // host5 built v1 itself: the derivation came over; host1 got only the output.
    let drv = format!("activatable-nixpave-test-system-{v1}.drv");
    assert!(
        fleet.lab.host(4).sh("ls /nix/store").contains(&drv),
        "no {drv} on host5"
    );
    assert!(
        !fleet.lab.host(0).sh("ls /nix/store").contains(&drv),
        "{drv} on host1"
    );

    // No-op: one login per host.
    let out = deploy(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    assert!(outcomes(&r).iter().all(|(_, o)| o == "unchanged"), "{r}");
    assert_eq!(r["ssh_handshakes"], 5, "{r}");

    // v2 fails to activate on host2, hangs on host3 and cuts host4's network: those roll back by
    // themselves; host1 and host5 run v2.
    let iface4 = fleet.lab.host(3).interface();
    fleet.write(
        "v2",
        serde_json::json!({
            "host1": {},
            "host2": { "break": { "fail": true } },
            "host3": { "break": { "hang": true } },
            "host4": { "break": { "netDown": iface4 } },
            "host5": {},
        }),
        false,
    );
    let out = deploy(&["--skip-checks"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[
            ("host1", "deployed"),
            ("host2", "rolled-back"),
            ("host3", "rolled-back"),
            ("host4", "rolled-back"),
            ("host5", "deployed"),
        ])
    );
    let v2 = format!("v2-{}", std::process::id());
    let after: Vec<String> = fleet.lab.hosts().iter().map(current_release).collect();
    assert_eq!(after[0], v2);
    assert_eq!(after[4], v2);
    // A rolled-back host re-activated v1 (host3's hung v2 never wrote its marker).
    assert_eq!(after[1], v1);
    assert_eq!(after[2], v1);
    assert_eq!(after[3], v1);

    // host4 is reachable again over the same `-F` config, and status reads every host through it.
    let out = fleet.nixpave(&["status", &flake, "--state-dir", STATE_DIR, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(
        rows[3]["profiles"][0]["last"]["state"], "rolled-back",
        "{rows}"
    );
    assert_eq!(rows[3]["profiles"][0]["generation"], 1, "{rows}");
    assert_eq!(rows[0]["profiles"][0]["generation"], 2, "{rows}");
}

#[test]
fn jump_host_quoted_node_names_overrides_and_rollback_succeeded() {
    let fleet = Fleet::new(3);
    let (jump, web, db) = (fleet.lab.host(0), fleet.lab.host(1), fleet.lab.host(2));
    let key = web.identity_file().display().to_string();
    let known = web.known_hosts().display().to_string();
    // The nodes are named like DNS names and reached by address through host1 (`-J`), with the key and
    // known_hosts given in sshOpts as a deploy-rs user would.
    let node = |h: &LabHost, brk: serde_json::Value| {
        serde_json::json!({
            "hostname": h.address(),
            "sshOpts": ["-J", "host1", "-i", key, "-o", format!("UserKnownHostsFile={known}"),
                        "-o", "IdentitiesOnly=yes"],
            "break": brk,
        })
    };
    let hosts = |db_break: serde_json::Value| {
        serde_json::json!({
            "web1.example.com": node(web, serde_json::json!({})),
            "db1.example.com": node(db, db_break),
        })
    };
    fleet.write("v1", hosts(serde_json::json!({})), false);
    let jump_logins = jump.accepted_logins();

    let web_only = fleet.flake("#\"web1.example.com\".system");
    let out = fleet.nixpave(&["deploy", &web_only, "--state-dir", STATE_DIR, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[("web1.example.com", "deployed")])
    );
    assert_eq!(db.accepted_logins(), 0, "db1 was not selected");
    // Every connection went through the jump host: host1 accepted the hops, and host2 saw them come from
    // host1's address, never from this machine's.
    assert!(
        jump.accepted_logins() >= jump_logins + 2,
        "{}",
        jump.sshd_log()
    );
    let from_jump = format!("from {} ", jump.address());
    let log = web.sshd_log();
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Accepted publickey"))
        .collect();
    assert!(!accepted.is_empty(), "{log}");
    assert!(accepted.iter().all(|l| l.contains(&from_jump)), "{log}");

    // A dotted name that is not quoted is refused with a hint, before anything runs.
    let out = fleet.nixpave(&[
        "deploy",
        &fleet.flake("#web1.example.com.system"),
        "--state-dir",
        STATE_DIR,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("quote names"), "{}", text(&out));

    // `--ssh-opts` replaces the flake's options (deploy-rs): without the jump host, by address, it still
    // works because the key and known_hosts come along. `--temp-path` moves the agent.
    fleet.write("v1", hosts(serde_json::json!({})), false);
    // Lab hosts share this machine's /var.
    let temp = tempfile::tempdir_in("/var/tmp").expect("temp path");
    let out = fleet.nixpave(&[
        "deploy",
        &fleet.flake(""),
        "--state-dir",
        STATE_DIR,
        "--temp-path",
        &temp.path().display().to_string(),
        "--json",
        "--ssh-opts",
        &format!("-i {key} -o UserKnownHostsFile={known} -o IdentitiesOnly=yes"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[
            ("db1.example.com", "deployed"),
            ("web1.example.com", "unchanged")
        ])
    );
    assert!(db.accepted_logins() > 0, "{}", db.sshd_log());
    let agents: Vec<_> = std::fs::read_dir(temp.path().join("nixpave-agent"))
        .expect("agent directory under --temp-path")
        .collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(
        !db.sshd_log()
            .lines()
            .filter(|l| l.contains("Accepted publickey"))
            .any(|l| l.contains(&from_jump)),
        "{}",
        db.sshd_log()
    );

    // v2 fails on db1; with --rollback-succeeded web1 goes back to v1 too (deploy-rs's all or nothing).
    fleet.write("v2", hosts(serde_json::json!({ "fail": true })), false);
    let out = fleet.nixpave(&[
        "deploy",
        &fleet.flake(""),
        "--state-dir",
        STATE_DIR,
        "--json",
        "--rollback-succeeded",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[
            ("db1.example.com", "rolled-back"),
            ("web1.example.com", "rolled-back")
        ])
    );
    let v1 = format!("v1-{}", std::process::id());
    assert_eq!(current_release(web), v1);
    assert_eq!(current_release(db), v1);
}

#[test]
fn a_flake_evaluated_node_by_node_deploys_as_it_evaluates() {
    // One node per evaluation: the fleet is listed, its checks built first, then each node evaluated and
    // deployed in turn, with the command line's overrides (--state-dir) and --rollback-succeeded as usual.
    let fleet = Fleet::new(3);
    let flake = fleet.flake("");
    // The chunk size from the flag (colmena's --eval-node-limit); the v2 deploy below sets it through
    // NIXPAVE_EVAL_NODE_LIMIT instead.
    let deploy = |extra: &[&str]| {
        let mut args = vec!["deploy", &flake, "--state-dir", STATE_DIR, "--json"];
        if !extra.contains(&"--rollback-succeeded") {
            args.extend(["--eval-node-limit", "1"]);
        }
        args.extend(extra);
        let env: &[(&str, &str)] = if extra.contains(&"--rollback-succeeded") {
            &[("NIXPAVE_EVAL_NODE_LIMIT", "1")]
        } else {
            &[]
        };
        fleet.nixpave_with(&args, env)
    };
    fleet.write("v1", all_hosts(&fleet.lab), true);
    let out = deploy(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("schema check failed on purpose"),
        "{}",
        text(&out)
    );
    for h in fleet.lab.hosts() {
        assert_eq!(h.accepted_logins(), 0, "{} was contacted", h.name());
    }

    fleet.write("v1", all_hosts(&fleet.lab), false);
    let out = deploy(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let evaluated: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "evaluated")
        .map(|e| e["done"].clone())
        .collect();
    assert_eq!(evaluated, [1, 2, 3], "{}", text(&out));
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[
            ("host1", "deployed"),
            ("host2", "deployed"),
            ("host3", "deployed")
        ])
    );
    let v1 = format!("v1-{}", std::process::id());
    for h in fleet.lab.hosts() {
        assert_eq!(current_release(h), v1, "{}", h.name());
        // --state-dir reached every chunk's hosts.
        assert!(
            h.sh(&format!("cat {STATE_DIR}/system.json"))
                .contains("confirmed"),
            "{}",
            h.name()
        );
    }

    // v2 fails on host2; --rollback-succeeded takes host1 and host3 back to v1.
    let mut hosts = all_hosts(&fleet.lab);
    hosts["host2"] = serde_json::json!({ "break": { "fail": true } });
    fleet.write("v2", hosts, false);
    let out = deploy(&["--skip-checks", "--rollback-succeeded"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""event":"evaluated""#),
        "NIXPAVE_EVAL_NODE_LIMIT=1 did not list the fleet: {}",
        text(&out)
    );
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[
            ("host1", "rolled-back"),
            ("host2", "rolled-back"),
            ("host3", "rolled-back")
        ])
    );
    for h in fleet.lab.hosts() {
        assert_eq!(current_release(h), v1, "{}", h.name());
    }
}

#[test]
fn deploy_rs_flake_on_nixos_shaped_hosts_and_the_booted_generation() {
    let fleet = Fleet::on(Lab::up_nixos(2).expect("lab up"));
    let flake = fleet.flake("");
    let deploy = || fleet.nixpave(&["deploy", &flake, "--state-dir", STATE_DIR, "--json"]);
    fleet.write("v1", all_hosts(&fleet.lab), false);
    let out = deploy();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    fleet.write(
        "v2",
        serde_json::json!({ "host1": {}, "host2": { "break": { "fail": true } } }),
        false,
    );
    let out = deploy();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(
        outcomes(&report(&out)),
        pairs(&[("host1", "deployed"), ("host2", "rolled-back")])
    );

    // host1 booted v1: the toplevel inside generation 1's activate.nixos wrapper, not the wrapper itself.
    let h1 = fleet.lab.host(0);
    h1.sh("top=$(dirname $(dirname $(readlink -f /nix/var/nix/profiles/system-1-link/bin/switch-to-configuration))); \
         ln -sfn $top /run/booted-system",
    );
    let out = fleet.nixpave(&["status", &flake, "--state-dir", STATE_DIR, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(rows[0]["profiles"][0]["generation"], 2, "{rows}");
    assert_eq!(rows[0]["profiles"][0]["booted_generation"], 1, "{rows}");
    assert!(
        rows[1]["profiles"][0]["booted_generation"].is_null(),
        "{rows}"
    );
    let out = fleet.nixpave(&["status", &flake, "--state-dir", STATE_DIR]);
    let table = text(&out);
    assert!(table.contains("BOOTED"), "{table}");
}

#[test]
fn deploy_local_activates_the_machine_it_runs_on_without_ssh() {
    // nixpave runs *inside* a lab host (its namespaces, its own /nix), as on a server deploying itself.
    let lab = Lab::up(1).expect("lab up");
    let h = lab.host(0);
    let dir = tempfile::tempdir_in("/var/tmp").expect("flake dir"); // lab hosts have their own /tmp
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixpave-deploy/tests/fixtures");
    std::fs::copy(fixtures.join("system.nix"), dir.path().join("system.nix")).expect("copy");
    let tag = format!("local-{}", std::process::id());
    let write = |fail: bool| {
        std::fs::write(
            dir.path().join("flake.nix"),
            format!(
                r#"{{ outputs = {{ self }}: {{ deploy.nodes.me = {{ hostname = "me.invalid";
  profiles.system.path = import ./system.nix {{ tag = "{tag}-{fail}"; fail = {fail}; }}; }};
  deploy.nodes.other = {{ hostname = "other.invalid"; profiles.system.path = import ./system.nix {{ tag = "x"; }}; }}; }}; }}"#
            ),
        )
        .expect("flake");
    };
    let nixpave = |fragment: &str| {
        let conf = h.state().root.join("etc-nix");
        let flake = format!("{}{fragment}", dir.path().display());
        let out = h
            .run_inside(&[
                "env",
                &format!("NIX_CONF_DIR={}", conf.display()),
                env!("CARGO_BIN_EXE_nixpave"),
                "deploy",
                &flake,
                "--local",
                "--state-dir",
                STATE_DIR,
                "--json",
            ])
            .expect("nsenter");
        out
    };
    write(false);
    // Two nodes selected: which one is "this machine" would be a guess.
    let out = nixpave("");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = nixpave("#me");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(outcomes(&report(&out)), pairs(&[("me", "deployed")]));
    assert_eq!(
        h.sh("cat /nix/var/nixpave-test/current"),
        format!("{tag}-false")
    );
    // A failing release rolls back by itself here too.
    write(true);
    let out = nixpave("#me");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(outcomes(&report(&out)), pairs(&[("me", "rolled-back")]));
    assert_eq!(
        h.sh("cat /nix/var/nixpave-test/current"),
        format!("{tag}-false")
    );
    assert_eq!(h.accepted_logins(), 0, "no ssh at all");
}
