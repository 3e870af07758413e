//! Substitution on the destination with real nix and real ssh: the install phase against a lab host (its
//! own /nix, /root and /tmp; the new root a tmpfs in it), `nix copy --substitute-on-destination` over
//! ssh. The substituters and keys nixpave writes into the installing user's nix configuration there make
//! the destination fetch a path from a signed `file://` binary cache instead of receiving it from here.
//! (A local chroot store would not do: nix copies into a local store without substituting.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use nixpave_install::install_node;
use nixpave_install::phase::PhaseSet;
use nixpave_install::run::{Installer, NodeSpec, Timeouts};
use nixpave_install::state::StateStore;
use nixpave_install::steps::SubstituterSettings;
use nixpave_lab::testing::{Lab, LabHost};
use nixpave_remote::SshConnection;
use nixpave_remote::SshTransport;

/// A system (as `install_local.rs`'s: switch-to-configuration and activate, from busybox) that also
/// holds `payload`, a path the binary cache has.
const SYSTEM: &str = r#"
{ busybox, tag }:
let
  payload = builtins.derivation {
    name = "nixpave-payload-${tag}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo ${tag} > $out" ];
  };
in builtins.derivation {
  name = "nixpave-substitute-system-${tag}";
  system = "x86_64-linux";
  builder = "/bin/sh";
  inherit busybox payload;
  args = [ "-c" ''
    set -e
    /bin/mkdir -p $out/bin
    /bin/cp $busybox $out/bin/busybox
    /bin/ln -s busybox $out/bin/sh
    /bin/ln -s $payload $out/payload
    printf '#!%s/bin/sh\ntrue\n' $out > $out/bin/switch-to-configuration
    printf '#!%s/bin/sh\ntrue\n' $out > $out/activate
    /bin/chmod +x $out/activate $out/bin/switch-to-configuration
  '' ];
}
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The signatures `path` carries in the lab host's store at `root`.
fn sigs(host: &LabHost, root: &str, path: &str) -> String {
    let out = host
        .run_inside(&[
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--sigs",
            "--store",
            root,
            path,
        ])
        .expect("nix path-info in the lab host");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_destination_substitutes_from_the_flake_s_signed_cache() {
    // Outside /tmp: the lab host has its own /tmp, and reads the cache from here.
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let tag = format!("{:x}", std::process::id());
    std::fs::write(dir.path().join("system.nix"), SYSTEM).expect("system.nix");
    let toplevel = nix_build(
        &dir.path().join("system.nix"),
        &[("busybox", "/bin/busybox"), ("tag", &tag)],
        &[],
    );
    let payload = std::fs::read_link(Path::new(&toplevel).join("payload")).expect("payload");
    let payload = payload.display().to_string();

    // A signed binary cache holding only the payload.
    let (secret, public) = (dir.path().join("cache.sk"), dir.path().join("cache.pk"));
    run(Command::new("nix-store")
        .args(["--generate-binary-cache-key", "nixpave-test-cache-1"])
        .arg(&secret)
        .arg(&public));
    let cache = format!("file://{}", dir.path().join("cache").display());
    run(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
        ])
        .arg(format!("{cache}?secret-key={}", secret.display()))
        .arg(&payload));
    let key = std::fs::read_to_string(&public).expect("public key");

    // The new root: a tmpfs in the lab host (so `mountpoint` holds, like /mnt on an installer).
    let lab = Lab::up(1).expect("lab up");
    let host = lab.host(0);
    let root = "/root/nixpave-substitute-root";
    let mounted = host
        .run_inside(&[
            "sh",
            "-c",
            &format!("mkdir -p {root} && mount -t tmpfs -o size=128m nixpave-test {root}"),
        ])
        .expect("mount in the lab host");
    assert!(
        mounted.status.success(),
        "{}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    let ssh =
        SshTransport::connect(&host.target(), host.ssh_options()).expect("ssh to the lab host");

    // As the CLI makes them from a flake's nixConfig and --option.
    let settings = SubstituterSettings::from_settings([
        ("extra-substituters", cache.as_str()),
        ("extra-trusted-public-keys", key.trim()),
    ]);
    let spec = NodeSpec {
        node: "subst1".into(),
        session: Box::new(SshConnection::new(ssh)),
        toplevel: toplevel.clone(),
        arch: std::env::consts::ARCH.into(),
        phases: PhaseSet::parse("install").expect("phases"),
        resume: false,
        kexec: None,
        disk: None,
        root: PathBuf::from(root),
        extra_files: None,
        chown: Vec::new(),
        copy_host_keys: false,
        substitute_on_destination: true,
        substituters: settings,
        build_on_target: None,
        force_kexec: false,
        nix_args: Vec::new(),
        timeouts: Timeouts::default(),
        ram: Default::default(),
    };
    let rec = Recorder::default();
    let inst = Installer {
        state: StateStore::new(dir.path().join("state")),
        reporter: &rec,
        disk_engine: &nixpave_install::disk::SequentialEngine,
        confirm: &|_, _| true,
    };
    install_node(&spec, &inst).expect("install");

    let written = host
        .run_inside(&["cat", "/root/.config/nix/nix.conf"])
        .expect("cat");
    let written = String::from_utf8_lossy(&written.stdout);
    assert!(
        written.contains(&format!("extra-substituters = {cache}")),
        "{written}"
    );
    assert!(
        rec.json()
            .contains(&format!("also substitutes from {cache}")),
        "{}",
        rec.json()
    );
    // The payload came from the cache (it carries the cache's signature); the system itself, which
    // the cache has not, was copied from here (no signature).
    let payload_sigs = sigs(host, root, &payload);
    assert!(
        payload_sigs.contains("nixpave-test-cache-1:"),
        "{payload_sigs}"
    );
    let system_sigs = sigs(host, root, &toplevel);
    assert!(
        !system_sigs.contains("nixpave-test-cache-1:"),
        "{system_sigs}"
    );
    let _ = host.run_inside(&["umount", "-R", root]);
}
