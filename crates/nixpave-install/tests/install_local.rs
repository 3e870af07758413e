//! The install phase for real on this machine: `nix copy` into a chroot store, the system
//! profile, extra files with their modes, `--chown`, the bootloader run by the system's own
//! `switch-to-configuration boot` in a chroot with /dev, /proc and /sys bound — and resume.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use nixpave_disk::Operation;
use nixpave_install::phase::{Phase, PhaseSet};
use nixpave_install::run::{DiskSpec, Installer, NodeSpec, Timeouts};
use nixpave_install::state::{PhaseStatus, StateStore};
use nixpave_install::steps::{self, Chown, EncryptionKey};
use nixpave_install::{install_node, InstallError};
use nixpave_remote::LocalConnection;

/// A system whose switch-to-configuration records how it was called (inside the chroot).
const SYSTEM: &str = r#"
{ busybox, tag }:
builtins.derivation {
  name = "nixpave-local-system-${tag}";
  system = "x86_64-linux";
  builder = "/bin/sh";
  inherit busybox;
  args = [ "-c" ''
    set -e
    /bin/mkdir -p $out/bin
    /bin/cp $busybox $out/bin/busybox
    /bin/ln -s busybox $out/bin/sh
    printf '#!%s/bin/sh\necho "called=$1 install_bootloader=$NIXOS_INSTALL_BOOTLOADER root=$(%s/bin/busybox stat -c %%i /)" > /boot-record\n[ -e /dev/null ] && [ -e /proc/self ] && [ -d /sys/class ] && echo mounts-ok >> /boot-record\n[ -e /activated ] && echo activated-before >> /boot-record\n[ -e /mnt/etc/NIXOS ] && [ -e /mnt/boot-record ] && echo root-on-mnt >> /boot-record\n[ "$(%s/bin/busybox readlink /etc/mtab)" = /proc/mounts ] && echo mtab-ok >> /boot-record\ntrue\n' $out $out $out > $out/bin/switch-to-configuration
    printf '#!%s/bin/sh\necho "in_nixos_enter=$IN_NIXOS_ENTER nixos=$([ -e /etc/NIXOS ] && echo yes) resolv=$(%s/bin/busybox wc -c < /etc/resolv.conf)" > /activated\n' $out $out > $out/activate
    /bin/chmod +x $out/activate
    /bin/chmod +x $out/bin/switch-to-configuration
  '' ];
}
"#;

struct Fixture {
    dir: tempfile::TempDir,
    toplevel: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let nix = dir.path().join("system.nix");
        std::fs::write(&nix, SYSTEM).unwrap();
        let toplevel = nix_build(&nix, &[("busybox", "/bin/busybox"), ("tag", tag)], &[]);
        Fixture { dir, toplevel }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// A "disk" for the root: a tmpfs mounted at the root (so `mountpoint` holds, like /mnt).
    fn mount_root(&self) -> MountGuard {
        let root = self.root();
        std::fs::create_dir_all(&root).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "nixpave-test"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success());
        MountGuard(root)
    }

    fn spec(&self, phases: &str, resume: bool) -> NodeSpec {
        NodeSpec {
            node: "local1".into(),
            session: Box::new(LocalConnection::new()),
            toplevel: self.toplevel.clone(),
            arch: std::env::consts::ARCH.into(),
            phases: PhaseSet::parse(phases).unwrap(),
            resume,
            kexec: None,
            disk: None,
            root: self.root(),
            extra_files: None,
            chown: Vec::new(),
            copy_host_keys: false,
            substitute_on_destination: false,
            substituters: Default::default(),
            build_on_target: None,
            force_kexec: false,
            nix_args: Vec::new(),
            timeouts: Timeouts::default(),
            ram: Default::default(),
        }
    }
}

struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(&self.0)
            .status();
    }
}

fn installer<'a>(rec: &'a Recorder, state: &Path) -> Installer<'a> {
    Installer {
        state: StateStore::new(state),
        reporter: rec,
        disk_engine: &nixpave_install::disk::SequentialEngine,
        confirm: &|_, _| true,
    }
}

#[test]
fn install_phase_copies_sets_profile_and_runs_bootloader_in_a_chroot() {
    let fx = Fixture::new("a");
    let _mount = fx.mount_root();
    let extra = fx.dir.path().join("extra");
    std::fs::create_dir_all(extra.join("etc/secret")).unwrap();
    std::fs::write(extra.join("etc/secret/token"), "t0ken").unwrap();
    std::fs::set_permissions(
        extra.join("etc/secret/token"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::set_permissions(
        extra.join("etc/secret"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::create_dir_all(extra.join("home/app")).unwrap();
    std::fs::write(extra.join("home/app/data"), "d").unwrap();
    // Owned by someone else locally: --no-same-owner must make it root's.
    std::os::unix::fs::chown(extra.join("etc/secret/token"), Some(1234), Some(1234)).unwrap();

    let mut spec = fx.spec("install", false);
    spec.extra_files = Some(extra.clone());
    spec.chown = vec![Chown {
        path: "/home/app".into(),
        owner: "1000:100".into(),
    }];
    let rec = Recorder::default();
    let state_dir = fx.dir.path().join("state");
    let summary = install_node(&spec, &installer(&rec, &state_dir)).unwrap();
    assert_eq!(
        summary.timings.iter().map(|t| t.phase).collect::<Vec<_>>(),
        vec![Phase::Preflight, Phase::Install]
    );
    // The events in the CLI's JSON envelope (README, "JSON output"): `host`, snake_case kinds,
    // integer milliseconds in `*_ms`; the last event carries the summary's times.
    let lines: Vec<String> = rec
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["event"], "finished");
    assert_eq!(last["host"], "local1");
    assert_eq!(last["total_ms"].as_u64(), Some(summary.total_ms));
    assert_eq!(last["timings"][1]["phase"], "install");
    assert!(last["timings"][1]["duration_ms"].is_u64(), "{last}");
    let shapes = nixpave_testsupport::json_lines_shapes(&lines.join("\n"), 3, &["event", "phase"]);
    insta::assert_snapshot!(
        "json-install-events",
        serde_json::to_string_pretty(&shapes).unwrap()
    );

    let root = fx.root();
    // The closure is in the chroot store and the profile points at it.
    assert!(root
        .join(fx.toplevel.trim_start_matches('/'))
        .join("bin/busybox")
        .exists());
    let profile = std::fs::read_link(root.join("nix/var/nix/profiles/system")).unwrap();
    let generation = std::fs::read_link(root.join("nix/var/nix/profiles").join(profile)).unwrap();
    assert_eq!(generation, PathBuf::from(&fx.toplevel));
    // switch-to-configuration ran inside the chroot, with the flag and the bound filesystems.
    let record = std::fs::read_to_string(root.join("boot-record")).unwrap();
    assert!(
        record.contains("called=boot install_bootloader=1 root="),
        "{record}"
    );
    assert!(record.contains("mounts-ok"), "{record}");
    // What nixos-install/nixos-enter do: activate first (IN_NIXOS_ENTER=1, /etc/NIXOS there, the
    // installer's resolv.conf bound in), /etc/mtab, the root rbound onto its own /mnt.
    for what in ["activated-before", "root-on-mnt", "mtab-ok"] {
        assert!(record.contains(what), "{what} missing: {record}");
    }
    let activated = std::fs::read_to_string(root.join("activated")).unwrap();
    assert!(
        activated.starts_with("in_nixos_enter=1 nixos=yes resolv="),
        "{activated}"
    );
    if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
        assert!(
            activated
                .trim()
                .ends_with(&format!("resolv={}", resolv.len())),
            "{activated}"
        );
    }
    // resolv.conf is left as it was (there was none), the NIXOS marker and mtab stay.
    assert!(!root.join("etc/resolv.conf").exists());
    assert!(root.join("etc/NIXOS").exists());
    assert_eq!(
        std::fs::read_link(root.join("etc/mtab")).unwrap(),
        PathBuf::from("/proc/mounts")
    );
    // …and nothing stays mounted inside the root (the private mount namespace took it all).
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&format!("{}/", root.display())),
        "{mounts}"
    );
    // Extra files: modes kept, owned by root, --chown applied recursively.
    let token = std::fs::metadata(root.join("etc/secret/token")).unwrap();
    assert_eq!(token.mode() & 0o7777, 0o640);
    assert_eq!((token.uid(), token.gid()), (0, 0));
    assert_eq!(
        std::fs::metadata(root.join("etc/secret")).unwrap().mode() & 0o7777,
        0o750
    );
    let data = std::fs::metadata(root.join("home/app/data")).unwrap();
    assert_eq!((data.uid(), data.gid()), (1000, 100));
    // The root's own mode is untouched by the archive (no `.` entry).
    assert_eq!(
        std::fs::metadata(&root).unwrap().mode() & 0o777,
        0o777 & 0o1777
    );

    // The state says install is done; re-running the finished phase is safe.
    let st = StateStore::new(&state_dir).load("local1").unwrap().unwrap();
    assert_eq!(st.record(Phase::Install).unwrap().status, PhaseStatus::Done);
    install_node(&spec, &installer(&rec, &state_dir)).unwrap();
}

#[test]
fn failure_is_recorded_and_resume_reruns_only_what_is_left() {
    let fx = Fixture::new("b");
    let rec = Recorder::default();
    let state_dir = fx.dir.path().join("state");
    // Nothing mounted at the root and no layout to mount: the install phase fails, saying so.
    let spec = fx.spec("install", false);
    let err = install_node(&spec, &installer(&rec, &state_dir)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            InstallError::Phase {
                phase: Phase::Install,
                ref error,
                ..
            } if matches!(**error, nixpave_install::PhaseError::NotMounted(_))
        ),
        "{text}"
    );
    assert!(
        text.contains("nothing is mounted at") && text.contains("--resume"),
        "{text}"
    );
    let st = StateStore::new(&state_dir).load("local1").unwrap().unwrap();
    assert_eq!(
        st.record(Phase::Install).unwrap().status,
        PhaseStatus::Failed
    );

    // With a mount plan in the layout, --resume mounts and finishes.
    let _cleanup = MountGuard(fx.root());
    std::fs::create_dir_all(fx.root()).unwrap();
    let mut spec = fx.spec("install", true);
    let root = fx.root().display().to_string();
    spec.disk = Some(DiskSpec {
        plan: plan(
            nixpave_disk::Mode::DestroyFormatMount,
            vec![op(&["false"], "never runs", true)],
        ),
        mount_plan: Some(plan(
            nixpave_disk::Mode::Mount,
            vec![op(
                &["mount", "-t", "tmpfs", "nixpave-test", &root],
                "mount the root",
                false,
            )],
        )),
        needs: Vec::new(),
        keys: Vec::new(),
    });
    let summary = install_node(&spec, &installer(&rec, &state_dir)).unwrap();
    assert_eq!(summary.timings.last().unwrap().phase, Phase::Install);
    // A second --resume has nothing left to do and says so.
    let again = install_node(&spec, &installer(&rec, &state_dir)).unwrap_err();
    assert!(again.to_string().contains("nothing to resume"), "{again}");
}

/// A real local transport that remembers every argv it ran (to prove secrets never reach one).
#[derive(Default)]
struct ArgvLog {
    inner: nixpave_remote::LocalTransport,
    seen: std::sync::Mutex<Vec<String>>,
}

impl nixpave_remote::Transport for ArgvLog {
    fn host(&self) -> &str {
        "localhost"
    }
    fn run(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<nixpave_remote::CommandOutput, nixpave_remote::TransportError> {
        self.seen
            .lock()
            .unwrap()
            .push(nixpave_remote::shell_join(argv));
        self.inner.run(argv, stdin)
    }
    fn run_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        on_line: &mut dyn FnMut(nixpave_remote::OutputStream, &str),
    ) -> Result<nixpave_remote::CommandOutput, nixpave_remote::TransportError> {
        self.seen
            .lock()
            .unwrap()
            .push(nixpave_remote::shell_join(argv));
        self.inner.run_streaming(argv, stdin, on_line)
    }
    fn upload(
        &self,
        contents: &[u8],
        spec: &nixpave_remote::UploadSpec,
    ) -> Result<(), nixpave_remote::TransportError> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("upload {}", spec.dest.display()));
        self.inner.upload(contents, spec)
    }
    fn read_file(&self, path: &Path) -> Result<Vec<u8>, nixpave_remote::TransportError> {
        self.inner.read_file(path)
    }
}

#[test]
fn disk_phase_keys_land_0600_and_never_reach_an_argv() {
    use nixpave_install::disk::DiskEngine;
    let dir = tempfile::tempdir().unwrap();
    let secret = "correct-horse-battery-staple-7431";
    let local_key = dir.path().join("luks.key");
    std::fs::write(&local_key, secret).unwrap();
    let remote_key = dir.path().join("installer-ram/secret.key");
    let seen = dir.path().join("seen-by-plan");
    let t = ArgvLog::default();
    steps::upload_keys(
        &t,
        &[EncryptionKey {
            remote: remote_key.clone(),
            local: local_key,
        }],
    )
    .unwrap();
    // The plan reads the key on the target and feeds it on stdin (as `cryptsetup --key-file=-`).
    let p = plan(
        nixpave_disk::Mode::Format,
        vec![Operation {
            stdin: Some(nixpave_disk::StdinSource::File {
                path: remote_key.display().to_string(),
            }),
            ..op(
                &["sh", "-c", &format!("cat > {}", seen.display())],
                "consume the key",
                false,
            )
        }],
    );
    let mut lines = Vec::new();
    nixpave_install::disk::SequentialEngine
        .apply(&t, &p, &mut |l| lines.push(l.to_string()))
        .unwrap();
    let meta = std::fs::metadata(&remote_key).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        std::fs::metadata(remote_key.parent().unwrap())
            .unwrap()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), secret);
    let argvs = t.seen.lock().unwrap().join("\n");
    assert!(!argvs.contains(secret), "{argvs}");
    assert!(argvs.contains("secret.key"));
    assert!(!lines.join("\n").contains(secret));
}

#[test]
fn disk_phase_in_a_container_is_refused_before_writing() {
    let facts = nixpave_remote::gather_facts(&nixpave_remote::LocalTransport).unwrap();
    if facts.kexec.container.is_none() {
        eprintln!("not running in a container: nothing to check here");
        return;
    }
    let fx = Fixture::new("d");
    let marker = fx.dir.path().join("written");
    let mut spec = fx.spec("disk,install", false);
    spec.disk = Some(DiskSpec {
        plan: plan(
            nixpave_disk::Mode::DestroyFormatMount,
            vec![op(
                &["touch", &marker.display().to_string()],
                "would write",
                true,
            )],
        ),
        mount_plan: None,
        needs: Vec::new(),
        keys: Vec::new(),
    });
    let rec = Recorder::default();
    let err = install_node(&spec, &installer(&rec, &fx.dir.path().join("state"))).unwrap_err();
    assert!(matches!(err, InstallError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("container"), "{err}");
    assert!(!marker.exists());
    assert!(rec.json().contains("\"event\":\"refused\""));
}

#[test]
fn keys_upload_reports_the_filesystem() {
    let d = tempfile::tempdir().unwrap();
    let local = d.path().join("k");
    std::fs::write(&local, "x").unwrap();
    let landed = steps::upload_keys(
        &nixpave_remote::LocalTransport,
        &[EncryptionKey {
            remote: PathBuf::from("/dev/shm")
                .join(format!("nixpave-test-{}", std::process::id()))
                .join("k"),
            local,
        }],
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(landed[0].0.parent().unwrap());
    assert!(steps::is_ram_fs(&landed[0].1), "{:?}", landed);
}
