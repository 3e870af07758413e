//! End to end in lab VMs (slow, `#[ignore]`d; run by `scripts/test-install.sh`):
//! any Linux → kexec into the test installer → real disk layouts (LUKS on LVM; mdadm raid1)
//! → the test system with GRUB → reboot from its own disk → verify. Plus preflight refusals, and (after the
//! CLI's resume and mount-mode reinstall) `nixpave deploy` and `nixpave rollback` on the installed system.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nixpave_disk::{Mode, Plan};
use nixpave_install::kexec;
use nixpave_install::phase::{Phase, PhaseSet};
use nixpave_install::preflight::{DiskNeed, Refusal};
use nixpave_install::run::{DiskSpec, Installer, KexecSpec, NodeSpec, Timeouts};
use nixpave_install::state::StateStore;
use nixpave_install::steps::EncryptionKey;
use nixpave_install::{install_node, InstallError};
use nixpave_lab::vm::{Vm, VmSpec};
use nixpave_remote::SshConnection;
use nixpave_remote::{HostKeyPolicy, Privilege, SshOptions, SshTransport, Target};

fn start_vm(name: &str, memory_mib: u64, disks: u32) -> Vm {
    start_vm_with(name, memory_mib, disks, false)
}

fn start_vm_with(name: &str, memory_mib: u64, disks: u32, uefi: bool) -> Vm {
    let spec = VmSpec::new(format!("{name}-{}", std::process::id() % 10000))
        .disks(disks)
        .disk_size(2 << 30)
        .memory_mib(memory_mib)
        .uefi(uefi)
        .boot_timeout(Duration::from_secs(400));
    Vm::start_with_progress(&spec, &mut |l| eprintln!("vm: {l}")).expect("lab VM starts")
}

/// Adds `alice` (password `SUDO_PASSWORD`, in group sudo, which needs that password) with the lab key, and
/// takes the key away from root: after kexec, root logins work only because the installer's kexec/run
/// carried over the sudo user's keys (as nixos-images' does).
const SUDO_PASSWORD: &str = "Pw-4471-tango";

fn add_sudo_user_and_lock_root(vm: &Vm) {
    vm.ssh_ok(&format!(
        "set -e; useradd -m -s /bin/sh alice; echo 'alice:{SUDO_PASSWORD}' | chpasswd; usermod -aG sudo alice; \
         install -d -m 700 -o alice -g alice /home/alice/.ssh; \
         install -m 600 -o alice -g alice /root/.ssh/authorized_keys /home/alice/.ssh/authorized_keys; \
         mv /root/.ssh/authorized_keys /root/.ssh/authorized_keys.moved-away"
    ))
    .expect("sudo user set up");
}

/// A session logging in as alice with sudo and a password (counted each time it is asked for).
fn sudo_session(vm: &Vm, asked: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> SshConnection {
    let target = Target {
        user: Some("alice".into()),
        host: "127.0.0.1".into(),
        port: Some(vm.ssh_port()),
    };
    let options = SshOptions {
        identity_file: Some(vm.key()),
        known_hosts: Some(vm.known_hosts()),
        host_key_policy: HostKeyPolicy::Strict,
        privilege: Privilege::Sudo,
        sudo_password: Some(std::sync::Arc::new(move |_host: &str| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(SUDO_PASSWORD.to_string())
        })),
        ..SshOptions::default()
    };
    let ssh = SshTransport::connect(&target, options.clone()).expect("ssh to the VM as alice");
    SshConnection::with_root_after_kexec(ssh, options)
}

/// Root at 127.0.0.1 until kexec, then at `localhost` (`--post-kexec-host`): a name known_hosts has no
/// entry for, so the login after kexec works only because the machine's keys were recorded for it.
fn post_kexec_session(vm: &Vm) -> SshConnection {
    let (target, options) = root_login(vm);
    let ssh = SshTransport::connect(&target, options.clone()).expect("ssh to the VM");
    let after = Target {
        host: "localhost".into(),
        ..target
    };
    SshConnection::with_login_after_kexec(ssh, options, Some(after))
}

/// Root at the VM's forwarded port with the VM's key, host keys checked strictly.
fn root_login(vm: &Vm) -> (Target, SshOptions) {
    let target = Target {
        user: Some("root".into()),
        host: "127.0.0.1".into(),
        port: Some(vm.ssh_port()),
    };
    let options = SshOptions {
        identity_file: Some(vm.key()),
        known_hosts: Some(vm.known_hosts()),
        host_key_policy: HostKeyPolicy::Strict,
        privilege: Privilege::None,
        ..SshOptions::default()
    };
    (target, options)
}

fn session(vm: &Vm) -> SshConnection {
    let (target, options) = root_login(vm);
    SshConnection::new(SshTransport::connect(&target, options).expect("ssh to the VM"))
}

/// Builds the test system from what the guest itself runs (kernel, stage 1, sshd, the bootloaders) with a
/// bootloader: `grub-bios`, `grub-efi` or `systemd-boot`.
fn test_system_with(vm: &Vm, work: &Path, tag: &str, bootloader: &str) -> String {
    let script = std::fs::read(fixtures().join("harvest.sh")).unwrap();
    let out = vm.ssh("sh -s", Some(&script)).unwrap();
    assert!(
        out.success(),
        "harvest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let harvest = work.join("harvest.tar.gz");
    std::fs::write(&harvest, &out.stdout).unwrap();
    nix_build(
        &fixtures().join("system.nix"),
        &[
            ("busybox", "/bin/busybox"),
            ("device", "/dev/vda"),
            ("tag", tag),
            ("bootloader", bootloader),
        ],
        &[("harvest", &harvest.display().to_string())],
    )
}

/// vda: BIOS boot partition + ext4 root (the label the guest's stage 1 looks for) + `extra`
/// partitions (`-nN:0:SIZE`, typecode) for the data layouts.
///
fn root_disk_ops(extra: &[(&str, &str)]) -> Vec<nixpave_disk::Operation> {
    let mut sg: Vec<String> = [
        "sgdisk",
        "-n1:0:+1M",
        "-t1:EF02",
        "-c1:bios",
        "-n2:0:+400M",
        "-t2:8300",
        "-c2:root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (i, (size, code)) in extra.iter().enumerate() {
        let n = i + 3;
        sg.push(format!("-n{n}:0:{size}"));
        sg.push(format!("-t{n}:{code}"));
    }
    sg.push("/dev/vda".into());
    let sg: Vec<&str> = sg.iter().map(String::as_str).collect();
    vec![
        op(&["sgdisk", "--zap-all", "/dev/vda"], "wipe /dev/vda", true),
        op(&sg, "partition /dev/vda", true),
        op(&["partx", "-u", "/dev/vda"], "re-read /dev/vda", false),
        op(&["udevadm", "settle", "-t", "10"], "wait for udev", false),
        op(
            &["mkfs.ext4", "-q", "-F", "-L", "nixpave-root", "/dev/vda2"],
            "format root",
            true,
        ),
    ]
}

fn mount_root_ops() -> Vec<nixpave_disk::Operation> {
    vec![op(&["mount", "/dev/vda2", "/mnt"], "mount root", false)]
}

fn luks_on_lvm_plan(key: &str) -> (Plan, Plan) {
    let mut ops = root_disk_ops(&[]);
    ops.extend([
        op(&["wipefs", "-a", "/dev/vdb"], "wipe /dev/vdb", true),
        op(
            &["pvcreate", "-ff", "-y", "/dev/vdb"],
            "LVM PV on /dev/vdb",
            true,
        ),
        op(&["vgcreate", "vgdata", "/dev/vdb"], "VG vgdata", true),
        op(
            &["lvcreate", "-y", "-L", "256M", "-n", "secret", "vgdata"],
            "LV vgdata/secret",
            true,
        ),
        op(
            &[
                "cryptsetup",
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                key,
                "/dev/vgdata/secret",
            ],
            "LUKS on vgdata/secret",
            true,
        ),
        op(
            &[
                "cryptsetup",
                "open",
                "--key-file",
                key,
                "/dev/vgdata/secret",
                "cryptdata",
            ],
            "open cryptdata",
            false,
        ),
        op(
            &[
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "data",
                "/dev/mapper/cryptdata",
            ],
            "format data",
            true,
        ),
    ]);
    ops.extend(mount_root_ops());
    ops.extend([
        op(&["mkdir", "-p", "/mnt/data"], "mountpoint /mnt/data", false),
        op(
            &["mount", "/dev/mapper/cryptdata", "/mnt/data"],
            "mount data",
            false,
        ),
    ]);
    (
        plan(Mode::DestroyFormatMount, ops),
        plan(Mode::Mount, mount_root_ops()),
    )
}

fn raid1_plan() -> (Plan, Plan) {
    let mut ops = root_disk_ops(&[]);
    ops.extend([
        op(&["wipefs", "-a", "/dev/vdb"], "wipe /dev/vdb", true),
        op(&["wipefs", "-a", "/dev/vdc"], "wipe /dev/vdc", true),
        op(
            &[
                "mdadm",
                "--create",
                "/dev/md/data",
                "--run",
                "--level=1",
                "--raid-devices=2",
                "--metadata=1.2",
                "--assume-clean",
                "/dev/vdb",
                "/dev/vdc",
            ],
            "raid1 over vdb, vdc",
            true,
        ),
        op(
            &["mkfs.ext4", "-q", "-F", "-L", "raid", "/dev/md/data"],
            "format raid",
            true,
        ),
    ]);
    ops.extend(mount_root_ops());
    ops.extend([
        op(&["mkdir", "-p", "/mnt/data"], "mountpoint /mnt/data", false),
        op(&["mount", "/dev/md/data", "/mnt/data"], "mount raid", false),
    ]);
    (
        plan(Mode::DestroyFormatMount, ops),
        plan(Mode::Mount, mount_root_ops()),
    )
}

fn tarball(vm: &Vm) -> KexecSpec {
    let path = vm.images().expect("the VM has images").installer_tarball();
    KexecSpec {
        tarball: Some(kexec::inspect(&path).unwrap()),
        fetch_url: None,
        remote_dir: "/root/nixpave-kexec".into(),
        extra_flags: None,
    }
}

fn needs(disks: &[&str]) -> Vec<DiskNeed> {
    disks
        .iter()
        .map(|d| DiskNeed {
            name: d.trim_start_matches("/dev/").into(),
            device: d.to_string(),
            min_bytes: 512 << 20,
        })
        .collect()
}

struct Run {
    work: tempfile::TempDir,
    toplevel: String,
}

fn prepare(vm: &Vm, tag: &str) -> Run {
    prepare_with(vm, tag, "grub-bios")
}

fn prepare_with(vm: &Vm, tag: &str, bootloader: &str) -> Run {
    nix_conf_dir();
    let work = tempfile::tempdir().unwrap();
    let toplevel = test_system_with(vm, work.path(), tag, bootloader);
    Run { work, toplevel }
}

fn node_spec(vm: &Vm, run: &Run, phases: &str, disk: Option<DiskSpec>) -> NodeSpec {
    NodeSpec {
        node: vm.name().to_string(),
        session: Box::new(session(vm)),
        toplevel: run.toplevel.clone(),
        arch: "x86_64".into(),
        phases: PhaseSet::parse(phases).unwrap(),
        resume: false,
        kexec: Some(tarball(vm)),
        disk,
        root: PathBuf::from("/mnt"),
        extra_files: None,
        chown: Vec::new(),
        copy_host_keys: true,
        substitute_on_destination: false,
        substituters: Default::default(),
        build_on_target: None,
        force_kexec: false,
        nix_args: Vec::new(),
        timeouts: Timeouts {
            kexec_up: Duration::from_secs(400),
            verify_up: Duration::from_secs(400),
            ..Timeouts::default()
        },
        ram: Default::default(),
    }
}

fn installer<'a>(
    rec: &'a Recorder,
    state: &Path,
    engine: &'a dyn nixpave_install::disk::DiskEngine,
) -> Installer<'a> {
    Installer {
        state: StateStore::new(state),
        reporter: rec,
        disk_engine: engine,
        confirm: &|_, _| true,
    }
}

/// The extra files every installed test system needs: root's authorized key for sshd.
fn extra_files(vm: &Vm, work: &Path) -> PathBuf {
    let dir = work.join("extra");
    let keys = dir.join("etc/ssh/authorized_keys.d");
    std::fs::create_dir_all(&keys).unwrap();
    let public = std::fs::read(vm.key().with_extension("pub")).unwrap();
    std::fs::write(keys.join("root"), public).unwrap();
    std::fs::set_permissions(keys.join("root"), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::write(dir.join("etc/motd-secret"), "m").unwrap();
    std::fs::set_permissions(
        dir.join("etc/motd-secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    dir
}

fn print_timings(rec: &Recorder, label: &str) {
    for e in rec.events.lock().unwrap().iter() {
        if let nixpave_install::Event::Finished {
            timings, total_ms, ..
        } = e
        {
            let phases: Vec<String> = timings
                .iter()
                .map(|t| format!("{} {:.1} s", t.phase, t.duration_ms as f64 / 1000.0))
                .collect();
            eprintln!(
                "TIMINGS {label}: {} total {:.1} s",
                phases.join(", "),
                *total_ms as f64 / 1000.0
            );
        }
    }
}

#[test]
#[ignore = "boots qemu VMs (minutes under TCG); run scripts/test-install.sh"]
fn e2e_luks_on_lvm_kexec_install_reboot_verify() {
    let vm = start_vm("inst-luks", 2048, 1);
    let run = prepare(&vm, "luks");
    let secret = "luks-secret-5521-horse";
    let key_local = run.work.path().join("data.key");
    std::fs::write(&key_local, secret).unwrap();
    let (p, mount) = luks_on_lvm_plan("/tmp/data.key");
    let disk = DiskSpec {
        plan: p,
        mount_plan: Some(mount),
        needs: needs(&["/dev/vda", "/dev/vdb"]),
        keys: vec![EncryptionKey {
            remote: "/tmp/data.key".into(),
            local: key_local,
        }],
    };
    let mut spec = node_spec(&vm, &run, "kexec,disk,install", Some(disk));
    spec.extra_files = Some(extra_files(&vm, run.work.path()));
    let localhost = format!("[localhost]:{}", vm.ssh_port());
    assert!(!std::fs::read_to_string(vm.known_hosts())
        .unwrap()
        .contains(&localhost));
    spec.session = Box::new(post_kexec_session(&vm));
    // nixos-images' kexec/run interface: extra flags for kexec (here one every kexec-tools has).
    if let Some(k) = spec.kexec.as_mut() {
        k.extra_flags = Some("--no-checks".into());
    }
    let rec = Recorder::default();
    let state = run.work.path().join("state");
    let engine = nixpave_install::disk::ExecEngine {
        root_mountpoint: "/mnt".into(),
        ..Default::default()
    };
    let inst = installer(&rec, &state, &engine);
    let first = install_node(&spec, &inst);
    if let Err(e) = &first {
        eprintln!("console:\n{}", vm.console_tail(40));
        panic!("{e}");
    }
    // In the installer: the key is 0600 in RAM, the data volume is LUKS on LVM, extra files kept their modes.
    let t = spec.session.transport();
    let sh = |c: &str| {
        let o = t.run(&["sh".into(), "-c".into(), c.into()], None).unwrap();
        assert!(o.success(), "{c}: {}", o.stderr_tail(5));
        o.stdout_str()
    };
    assert_eq!(sh("stat -c '%a %u' /tmp/data.key").trim(), "600 0");
    assert_eq!(sh("stat -f -c %T /tmp/data.key").trim(), "tmpfs");
    assert!(
        sh("lsblk -no TYPE /dev/mapper/cryptdata; cryptsetup status cryptdata").contains("LUKS2")
    );
    assert!(sh("lvs --noheadings -o lv_name vgdata").contains("secret"));
    assert_eq!(
        sh("stat -c %a /mnt/etc/motd-secret /mnt/etc/ssh/authorized_keys.d/root"),
        "600\n444\n"
    );
    assert!(sh("ls /mnt/boot/grub/").contains("i386-pc"));
    assert!(!rec.json().contains(secret));
    // The installer was reached at its post-kexec name, strictly checked with the machine's recorded keys.
    assert!(
        rec.json()
            .contains(&format!("host keys recorded for {localhost}")),
        "{}",
        rec.json()
    );
    assert_eq!(t.host(), format!("root@localhost:{}", vm.ssh_port()));
    assert!(
        !std::fs::read_to_string(StateStore::new(&state).path(vm.name()))
            .unwrap()
            .contains(secret)
    );

    // Reboot and verify as a second run (resume continues after install).
    let mut spec2 = node_spec(&vm, &run, "kexec,disk,install,reboot,verify", None);
    spec2.resume = true;
    drop(spec);
    let summary = match install_node(&spec2, &inst) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("console:\n{}", vm.console_tail(60));
            panic!("{e}");
        }
    };
    assert_eq!(
        summary.skipped,
        vec![Phase::Kexec, Phase::Disk, Phase::Install]
    );
    assert!(vm
        .console_tail(200)
        .contains("nixpave-test-system: sshd up"));
    print_timings(&rec, "luks-on-lvm");
}

/// A disko layout through nixpave's planner: BIOS boot + the ext4 root the test system boots from on vda,
/// an mdadm raid1 over vdb and vdc holding LUKS with `askPassword` (disko's default), ext4 on /data.
fn raid1_ask_password_layout() -> nixpave_disk::Layout {
    nixpave_disk::Layout::from_json(&serde_json::json!({
        "disk": {
            "main": { "type": "disk", "device": "/dev/vda", "content": { "type": "gpt", "partitions": {
                "boot": { "size": "1M", "type": "EF02", "priority": 1 },
                "root": { "size": "400M", "priority": 2, "content": {
                    "type": "filesystem", "format": "ext4", "mountpoint": "/",
                    "extraArgs": ["-L", "nixpave-root"] } } } } },
            "d1": { "type": "disk", "device": "/dev/vdb", "content": { "type": "mdraid", "name": "data" } },
            "d2": { "type": "disk", "device": "/dev/vdc", "content": { "type": "mdraid", "name": "data" } }
        },
        "mdadm": { "data": { "type": "mdadm", "level": 1, "content": {
            "type": "luks", "name": "cryptdata", "askPassword": true,
            "extraFormatArgs": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
            "content": { "type": "filesystem", "format": "ext4", "mountpoint": "/data" } } } }
    }))
    .expect("the layout is valid")
}

/// From a non-root login: `alice` with a password sudo (asked once) until kexec, root after it (the
/// installer only has root, with alice's keys). The disks come from a disko layout through the planner:
/// mdadm raid1 with an `askPassword` LUKS volume, its passphrase given before the run and fed on stdin.
/// No nixos-install on the test installer, so nixpave's own install steps run (activate, /etc/NIXOS, mtab,
/// the root on /mnt). The machine's host key is kept, so verify passes with strict checking against the
/// known_hosts written before anything ran.
#[test]
#[ignore = "boots qemu VMs (minutes under TCG); run scripts/test-install.sh"]
fn e2e_sudo_user_ask_password_luks_on_raid1() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let vm = start_vm("inst-raid", 2048, 2);
    let run = prepare(&vm, "raid");
    let layout = raid1_ask_password_layout();
    let plan = |mode| nixpave_disk::plan(&layout, mode, &Default::default()).expect("plan");
    let disk = DiskSpec {
        plan: plan(Mode::DestroyFormatMount),
        mount_plan: Some(plan(Mode::Mount)),
        needs: needs(&["/dev/vda", "/dev/vdb", "/dev/vdc"]),
        keys: Vec::new(),
    };
    assert_eq!(
        nixpave_install::disk::prompts(&disk.plan),
        vec![("cryptdata".to_string(), true)]
    );
    let mut spec = node_spec(&vm, &run, "kexec,disk,install", Some(disk));
    add_sudo_user_and_lock_root(&vm);
    let known_hosts_before = std::fs::read(vm.known_hosts()).unwrap();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    spec.session = Box::new(sudo_session(&vm, asked.clone()));
    spec.extra_files = Some(extra_files(&vm, run.work.path()));
    let rec = Recorder::default();
    let passphrase = "luks-ask-8812-staple";
    let engine = nixpave_install::disk::ExecEngine {
        root_mountpoint: "/mnt".into(),
        secrets: nixpave_install::disk::Secrets::new(
            [("cryptdata".to_string(), passphrase.as_bytes().to_vec())].into(),
        ),
    };
    let state = run.work.path().join("state");
    let inst = installer(&rec, &state, &engine);
    if let Err(e) = install_node(&spec, &inst) {
        eprintln!("console:\n{}", vm.console_tail(60));
        panic!("{e}");
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the sudo password is asked once"
    );
    // In the installer, as root: LUKS2 on the raid opens with the passphrase (and only with it), mounted.
    let t = spec.session.transport();
    let sh = |c: &str, stdin: Option<&[u8]>| {
        let o = t.run(&["sh".into(), "-c".into(), c.into()], stdin).unwrap();
        (o.success(), o.stdout_str(), o.stderr_tail(5))
    };
    let (ok, out, err) = sh(
        "id -u; cryptsetup status cryptdata; findmnt -no SOURCE /mnt/data; cat /proc/mdstat",
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("0\n") && out.contains("LUKS2") && out.contains("raid1"),
        "{out}"
    );
    let test_key = "cryptsetup open --test-passphrase --key-file=- \"$(cryptsetup status cryptdata | awk '/device:/ {print $2}')\"";
    assert!(sh(test_key, Some(passphrase.as_bytes())).0);
    assert!(!sh(test_key, Some(b"wrong")).0);
    assert!(!rec.json().contains(passphrase));
    assert!(
        !std::fs::read_to_string(StateStore::new(&state).path(vm.name()))
            .unwrap()
            .contains(passphrase)
    );
    // What nixos-install would have done, seen in the new root.
    let (ok, record, err) = sh(
        "cat /mnt/boot/nixpave/install-record /mnt/etc/nixpave-activated; test -e /mnt/etc/NIXOS",
        None,
    );
    assert!(ok, "{err}");
    for what in [
        "activated-before",
        "root-on-mnt",
        "mtab-ok",
        "in_nixos_enter=1 nixos=yes",
    ] {
        assert!(record.contains(what), "{what} missing: {record}");
    }
    assert!(rec.json().contains("copied the machine's ssh host keys"));
    assert!(rec.json().contains("no nixos-install on the target"));

    // Reboot and verify, resumed as root (the login user is gone with the old system).
    let mut spec2 = node_spec(&vm, &run, "kexec,disk,install,reboot,verify", None);
    spec2.resume = true;
    drop(spec);
    let summary = match install_node(&spec2, &inst) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("console:\n{}", vm.console_tail(60));
            panic!("{e}");
        }
    };
    assert_eq!(
        summary.skipped,
        vec![Phase::Kexec, Phase::Disk, Phase::Install]
    );
    assert_eq!(
        std::fs::read(vm.known_hosts()).unwrap(),
        known_hosts_before,
        "the machine kept its host key: nothing was re-recorded"
    );
    print_timings(&rec, "sudo-user-ask-password-luks-raid1");
}

/// The CPU-dependent lines of a generated hardware configuration (KVM module, microcode vendor) checked
/// against the machine's /proc/cpuinfo, then named generically: the snapshot then holds on any host (TCG's
/// `-cpu max` and KVM's `-cpu host` show different CPUs).
fn cpu_neutral(text: &str, cpuinfo: &str) -> String {
    let vendor = if cpuinfo.contains("GenuineIntel") {
        "intel"
    } else {
        "amd"
    };
    assert!(
        text.contains(&format!("hardware.cpu.{vendor}.updateMicrocode")),
        "{text}"
    );
    let virtualisation = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    assert_eq!(
        text.contains(&format!("\"kvm-{vendor}\"")),
        virtualisation,
        "{text}"
    );
    text.replace(&format!("\"kvm-{vendor}\""), "\"kvm-CPU\"")
        .replace(&format!("hardware.cpu.{vendor}."), "hardware.cpu.CPU.")
}

/// Evaluates a generated hardware configuration module with nix (stand-in `lib`, `config`, `modulesPath`).
fn eval_hardware_configuration(text: &str, work: &Path) -> serde_json::Value {
    let file = work.join("hardware-configuration.nix");
    std::fs::write(&file, text).unwrap();
    let expr = format!(
        "let m = import {} {{ config = {{ hardware.enableRedistributableFirmware = true; }}; \
         lib = {{ mkDefault = x: x; }}; modulesPath = \"/m\"; }}; in m",
        file.display()
    );
    let out = std::process::Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", &expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A UEFI layout through the planner: an ESP (vfat, EF00) on /boot and the ext4 root the test system boots.
fn uefi_layout() -> nixpave_disk::Layout {
    nixpave_disk::Layout::from_json(&serde_json::json!({
        "disk": { "main": { "type": "disk", "device": "/dev/vda", "content": { "type": "gpt", "partitions": {
            "ESP": { "size": "64M", "type": "EF00", "priority": 1, "content": {
                "type": "filesystem", "format": "vfat", "mountpoint": "/boot" } },
            "root": { "size": "100%", "priority": 2, "content": {
                "type": "filesystem", "format": "ext4", "mountpoint": "/",
                "extraArgs": ["-L", "nixpave-root"] } } } } } }
    }))
    .expect("the layout is valid")
}

/// A UEFI machine (OVMF) booted from its Debian disk: kexec into the installer, an ESP + root layout, the test
/// system with `bootloader`, reboot from the disk in UEFI mode; verify passes, and the firmware booted the
/// boot entry the bootloader's installer wrote (`label`). With `own_host_key` the new system brings its own
/// host key (in --extra-files): nixpave records it, and verify's strict check passes against it.
/// `nixos_install`: after kexec, the test installer's own `nixos-install` and `nixos-enter` (written for the lab
/// from the real ones' documented behaviour) are put on its PATH, so it stands for the real NixOS installer and
/// nixpave takes the nixos-install branch: nixos-install sets the profile, marks the root, rbinds it onto
/// /mnt/mnt and runs `switch-to-configuration boot` through nixos-enter, after the system's activation.
fn uefi_install(bootloader: &str, label: &str, own_host_key: bool, nixos_install: bool) {
    let vm = start_vm_with(&format!("inst-{bootloader}"), 2048, 0, true);
    assert!(
        vm.ssh_ok("test -d /sys/firmware/efi && echo uefi")
            .unwrap()
            .contains("uefi"),
        "the old system did not boot with UEFI"
    );
    let run = prepare_with(&vm, bootloader, bootloader);
    let layout = uefi_layout();
    let plan = |mode| nixpave_disk::plan(&layout, mode, &Default::default()).expect("plan");
    let disk = DiskSpec {
        plan: plan(Mode::DestroyFormatMount),
        mount_plan: Some(plan(Mode::Mount)),
        needs: needs(&["/dev/vda"]),
        keys: Vec::new(),
    };
    // Two runs: kexec and disks, the hardware configuration in the installer, then the rest.
    let mut spec = node_spec(&vm, &run, "kexec,disk", Some(disk));
    let extra = extra_files(&vm, run.work.path());
    let own_public = own_host_key.then(|| {
        // The new system brings its own host key: it is installed, recorded, and verify checks it strictly.
        let key = extra.join("etc/ssh/ssh_host_ed25519_key");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "new-system", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    });
    spec.extra_files = Some(extra.clone());
    let rec = Recorder::default();
    let engine = nixpave_install::disk::ExecEngine {
        root_mountpoint: "/mnt".into(),
        ..Default::default()
    };
    let state = run.work.path().join("state");
    let inst = installer(&rec, &state, &engine);
    if let Err(e) = install_node(&spec, &inst) {
        eprintln!("console:\n{}", vm.console_tail(80));
        panic!("{e}");
    }
    // The hardware configuration of this machine, by nixpave (the test installer has neither tool),
    // snapshot-tested and evaluated with nix.
    let (text, source) = nixpave_install::hwconfig::generate(
        spec.session.transport(),
        nixpave_install::hwconfig::Kind::NixosGenerateConfig,
        spec.disk.as_ref().map(|d| &d.plan),
    )
    .expect("hardware configuration");
    assert_eq!(source, nixpave_install::hwconfig::Source::Nixpave);
    let raw = spec
        .session
        .transport()
        .run(
            &[
                "sh".into(),
                "-c".into(),
                nixpave_install::hwconfig::FACTS_SCRIPT.into(),
            ],
            None,
        )
        .unwrap();
    eprintln!("HARDWARE FACTS:\n{}", raw.stdout_str());
    let cpuinfo = vm.ssh_ok("cat /proc/cpuinfo").unwrap();
    insta::assert_snapshot!(
        "uefi_vm_hardware_configuration",
        cpu_neutral(&text, &cpuinfo)
    );
    let evaluated = eval_hardware_configuration(&text, run.work.path());
    assert_eq!(evaluated["boot"]["loader"]["systemd-boot"]["enable"], true);
    assert_eq!(evaluated["imports"][0], "/m/profiles/qemu-guest.nix");

    if nixos_install {
        spec.session
            .transport()
            .run(
                &[
                    "sh".into(),
                    "-c".into(),
                    "ln -s /usr/local/lib/nixpave-lab/nixos-install /usr/local/lib/nixpave-lab/nixos-enter /usr/local/sbin/".into(),
                ],
                None,
            )
            .map(|o| assert!(o.success(), "{}", o.stderr_tail(5)))
            .unwrap();
    }
    // Install, reboot from the disk in UEFI mode, verify: resumed as a new run.
    let mut spec2 = node_spec(&vm, &run, "kexec,disk,install,reboot,verify", None);
    spec2.resume = true;
    spec2.extra_files = Some(extra);
    drop(spec);
    if let Err(e) = install_node(&spec2, &inst) {
        eprintln!("console:\n{}", vm.console_tail(80));
        panic!("{e}");
    }
    let events = rec.json();
    if nixos_install {
        // nixos-install ran (its own last words), and what it must provide around switch-to-configuration
        // was there: the activation first (through nixos-enter), the root on /mnt, /etc/mtab.
        for what in [
            "installing with the installer's nixos-install",
            "installing the boot loader...",
            "installation finished!",
            "activated-before",
            "root-on-mnt",
            "mtab-ok",
            "in_nixos_enter=1 nixos=yes",
        ] {
            assert!(events.contains(what), "{what} missing: {events}");
        }
        assert!(!events.contains("no nixos-install on the target"));
    } else {
        assert!(
            events.contains("no nixos-install on the target"),
            "{events}"
        );
    }
    let t = spec2.session.transport();
    if let Some(public) = &own_public {
        assert!(
            rec.json().contains("brings its own host keys"),
            "{}",
            rec.json()
        );
        let known = std::fs::read_to_string(vm.known_hosts()).unwrap();
        assert!(known.contains(public.as_str()), "{known}");
        let served = t
            .run(
                &["cat".into(), "/etc/ssh/ssh_host_ed25519_key.pub".into()],
                None,
            )
            .unwrap()
            .stdout_str();
        assert!(served.contains(public.as_str()), "{served}");
    }
    let o = t
        .run(
            &[
                "sh".into(),
                "-c".into(),
                "test -d /sys/firmware/efi; mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null; efibootmgr".into(),
            ],
            None,
        )
        .unwrap();
    let entries = o.stdout_str();
    assert!(o.success(), "{entries}{}", o.stderr_tail(5));
    let current = entries
        .lines()
        .find_map(|l| l.strip_prefix("BootCurrent: "))
        .unwrap_or_else(|| panic!("no BootCurrent: {entries}"))
        .trim()
        .to_string();
    let booted = entries
        .lines()
        .find(|l| l.starts_with(&format!("Boot{current}")))
        .unwrap_or_else(|| panic!("no entry {current}: {entries}"));
    assert!(
        booted.contains(label),
        "booted {booted}, not {label}:\n{entries}"
    );
    print_timings(&rec, &format!("uefi-{bootloader}"));
}

#[test]
#[ignore = "boots qemu VMs (minutes under TCG); run scripts/test-install.sh"]
fn e2e_uefi_systemd_boot() {
    uefi_install("systemd-boot", "Linux Boot Manager", false, false);
}

/// GRUB-EFI on an installer that has `nixos-install` (as every real NixOS installer): nixpave's nixos-install
/// branch, the new system's own host key.
#[test]
#[ignore = "boots qemu VMs (minutes under TCG); run scripts/test-install.sh"]
fn e2e_uefi_grub_efi() {
    uefi_install("grub-efi", "nixpave", true, true);
}

fn disk_sum(vm: &Vm) -> String {
    // The partition table and boot code of the disk the layout would wipe (the rest is the live root).
    vm.ssh_ok("head -c 1048576 /dev/vda | sha256sum | cut -c1-64")
        .unwrap()
}

#[test]
#[ignore = "boots qemu VMs (minutes under TCG); run scripts/test-install.sh"]
fn preflight_refusals_in_a_vm_write_nothing() {
    // 512 MiB: enough for the guest, too little for the installer (needs initrd × 2.5 + 384 MiB).
    let vm = start_vm("inst-pre", 512, 0);
    let run = prepare(&vm, "pre");
    let before = disk_sum(&vm);
    let (p, _) = raid1_plan();
    let disk = || DiskSpec {
        plan: p.clone(),
        mount_plan: None,
        needs: needs(&["/dev/vda"]),
        keys: Vec::new(),
    };
    let engine = nixpave_install::disk::SequentialEngine;
    let rec = Recorder::default();
    let state = run.work.path().join("state");
    let inst = installer(&rec, &state, &engine);
    let refusals = |spec: &NodeSpec| match install_node(spec, &inst) {
        Err(InstallError::Refused { refusals, .. }) => refusals,
        other => panic!("expected a refusal, got {other:?}"),
    };

    let r = refusals(&node_spec(&vm, &run, "kexec,disk,install", Some(disk())));
    assert!(
        r.iter().any(|x| matches!(x, Refusal::TooLittleRam { .. })),
        "{r:?}"
    );
    eprintln!("{}", r[0]);

    let mut missing = disk();
    missing.needs.push(DiskNeed {
        name: "data2".into(),
        device: "/dev/vdz".into(),
        min_bytes: 1,
    });
    let mut spec = node_spec(&vm, &run, "kexec,disk,install", Some(missing));
    spec.ram.headroom_mib = 0;
    spec.ram.initrd_factor = 0.0;
    let r = refusals(&spec);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].to_string().contains("/dev/vdz"));

    // A tool kexec/run needs is missing on the old system: the refusal names it. The VM runs its own kernel:
    // no shared-kernel refusal, and the guard itself lets it pass.
    vm.ssh_ok("mv /usr/bin/setsid /usr/bin/setsid.hidden")
        .unwrap();
    let mut spec = node_spec(&vm, &run, "kexec,disk,install", Some(disk()));
    spec.ram.headroom_mib = 0;
    spec.ram.initrd_factor = 0.0;
    let r = refusals(&spec);
    assert_eq!(
        r,
        vec![Refusal::MissingTools {
            tools: vec!["setsid".into()]
        }]
    );
    eprintln!("{}", r[0]);
    assert_eq!(
        vm.ssh_ok(&format!("{}; echo go", nixpave_remote::SHARED_KERNEL_GUARD))
            .unwrap()
            .trim(),
        "go"
    );
    vm.ssh_ok("mv /usr/bin/setsid.hidden /usr/bin/setsid")
        .unwrap();

    vm.ssh_ok("sysctl -w kernel.kexec_load_disabled=1").unwrap();
    let mut spec = node_spec(&vm, &run, "kexec,disk,install", Some(disk()));
    spec.ram.headroom_mib = 0;
    spec.ram.initrd_factor = 0.0;
    let r = refusals(&spec);
    assert!(matches!(r[0], Refusal::KexecUnavailable { .. }), "{r:?}");

    assert_eq!(disk_sum(&vm), before, "a refused install changed the disk");
    assert_eq!(
        vm.ssh_ok("ls /root/nixpave-kexec 2>/dev/null | wc -l")
            .unwrap()
            .trim(),
        "0"
    );
    let s = spec.session.transport().host().to_string();
    assert!(!s.is_empty());
}

/// The `nixpave` binary next to this test's deps directory (built by scripts/test-install.sh).
fn nixpave_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NIXPAVE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("nixpave");
    assert!(
        bin.exists(),
        "build the CLI first: cargo build -p nixpave ({} missing)",
        bin.display()
    );
    bin
}

fn cli_args(vm: &Vm, run: &Run, state: &Path, extra: &Path) -> Vec<String> {
    let tarball = vm.images().unwrap().installer_tarball();
    [
        "install",
        vm.name(),
        "--system",
        &run.toplevel,
        "--target",
        &format!("root@127.0.0.1:{}", vm.ssh_port()),
        "-i",
        &vm.key().display().to_string(),
        "--known-hosts",
        &vm.known_hosts().display().to_string(),
        "--kexec",
        &tarball.display().to_string(),
        "--disk-config",
        &fixtures().join("layout-root.nix").display().to_string(),
        "--extra-files",
        &extra.display().to_string(),
        "--copy-host-keys",
        "--yes-wipe-all-disks",
        "--json",
        "--state-dir",
        &state.display().to_string(),
        "--kexec-timeout",
        "400",
        "--reboot-timeout",
        "400",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn events_of(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
#[ignore = "boots qemu VMs (minutes under TCG); run scripts/test-install.sh"]
fn e2e_cli_killed_during_install_resumes_without_redoing_kexec_or_disk() {
    use std::io::{BufRead, BufReader};
    let vm = start_vm("inst-resume", 2048, 0);
    let run = prepare(&vm, "resume");
    let state = run.work.path().join("state");
    let extra = extra_files(&vm, run.work.path());
    let args = cli_args(&vm, &run, &state, &extra);
    let hardware = run.work.path().join("hardware-configuration.nix");

    // First run: kill -9 as soon as the install phase starts. It writes the hardware configuration after kexec.
    let mut first = args.clone();
    first.extend([
        "--generate-hardware-config".to_string(),
        "nixos-generate-config".into(),
        hardware.display().to_string(),
    ]);
    let mut child = std::process::Command::new(nixpave_bin())
        .args(&first)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        eprintln!("run 1: {line}");
        seen.push(line.clone());
        if line.contains("\"phase_started\"") && line.contains("\"install\"") {
            child.kill().unwrap();
            killed = true;
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        killed,
        "the install phase never started (exit {status:?}):\n{}\nconsole:\n{}",
        seen.join("\n"),
        vm.console_tail(40)
    );
    let st = StateStore::new(&state).load(vm.name()).unwrap().unwrap();
    assert!(
        st.is_done(Phase::Kexec) && st.is_done(Phase::Disk),
        "{st:?}"
    );
    assert!(!st.is_done(Phase::Install));
    let text = std::fs::read_to_string(&hardware).expect("the hardware configuration was written");
    let cpuinfo = vm.ssh_ok("cat /proc/cpuinfo").unwrap();
    insta::assert_snapshot!(
        "bios_vm_hardware_configuration",
        cpu_neutral(&text, &cpuinfo)
    );
    let evaluated = eval_hardware_configuration(&text, run.work.path());
    assert_eq!(evaluated["boot"]["loader"]["grub"]["enable"], true);
    assert!(seen
        .iter()
        .any(|l| l.contains("hardware configuration written to")));

    // Second run with --resume, up to the install: kexec and disk are skipped, install runs.
    let mut resume = args.clone();
    resume.extend(["--resume", "--phases", "kexec,disk,install"].map(String::from));
    let out = std::process::Command::new(nixpave_bin())
        .args(&resume)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("run 2:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        eprintln!("console:\n{}", vm.console_tail(60));
    }
    assert_eq!(out.status.code(), Some(0));
    let events = events_of(&text);
    let names = |kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .filter_map(|e| e["phase"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names("phase_started"), vec!["preflight", "install"]);
    assert_eq!(names("phase_skipped"), vec!["kexec", "disk"]);

    // Third run: reinstall another system with --disko-mode mount, as onto a machine whose data must
    // stay: the filesystems are only mounted (nothing formatted), a file written before survives, and
    // the new system boots.
    vm.ssh_ok("echo kept-5521 > /mnt/keep-me; umount -R /mnt")
        .expect("in the installer");
    let toplevel2 = nix_build(
        &fixtures().join("system.nix"),
        &[
            ("busybox", "/bin/busybox"),
            ("device", "/dev/vda"),
            ("tag", "resume2"),
            ("nix", "/usr/bin/nix"),
        ],
        &[(
            "harvest",
            &run.work.path().join("harvest.tar.gz").display().to_string(),
        )],
    );
    let mut again: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == run.toplevel {
                toplevel2.clone()
            } else {
                a.clone()
            }
        })
        .collect();
    again.extend(
        [
            "--disko-mode",
            "mount",
            "--phases",
            "disk,install,reboot,verify",
        ]
        .map(String::from),
    );
    let out = std::process::Command::new(nixpave_bin())
        .args(&again)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("run 3:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        eprintln!("console:\n{}", vm.console_tail(60));
    }
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !text.contains("mkfs"),
        "mount mode formats nothing:\n{text}"
    );
    assert_eq!(
        vm.ssh_ok("cat /keep-me; readlink -f /run/current-system")
            .expect("in the installed system")
            .trim(),
        format!("kept-5521\n{toplevel2}")
    );
    let events = events_of(&text);
    eprintln!(
        "TIMINGS resume+mount-reinstall: {:?}",
        events.iter().find(|e| e["event"] == "finished")
    );
    deploy_then_rollback(&vm, &run, &toplevel2);
}

/// The installed system (with nix) is a deploy target: `nixpave deploy` of a new generation through a
/// deploy-rs-shaped inventory makes it current (push, activation agent, new-login proof, confirm), and
/// `nixpave rollback` activates `installed` again.
fn deploy_then_rollback(vm: &Vm, run: &Run, installed: &str) {
    let started = std::time::Instant::now();
    let next = nix_build(
        &fixtures().join("system.nix"),
        &[
            ("busybox", "/bin/busybox"),
            ("device", "/dev/vda"),
            ("tag", "resume3"),
            ("nix", "/usr/bin/nix"),
        ],
        &[(
            "harvest",
            &run.work.path().join("harvest.tar.gz").display().to_string(),
        )],
    );
    let inventory = run.work.path().join("deploy.json");
    let nodes = serde_json::json!({ "nodes": { vm.name(): {
        "hostname": "127.0.0.1", "sshUser": "root", "sshOpts": ["-p", vm.ssh_port().to_string()],
        "profiles": { "system": { "user": "root", "path": next } } } } });
    std::fs::write(&inventory, nodes.to_string()).unwrap();
    let nixpave = |verb: &str| {
        let out = std::process::Command::new(nixpave_bin())
            .env("NIX_CONF_DIR", nix_conf_dir())
            .args([verb, "--inventory"])
            .arg(&inventory)
            .arg("-i")
            .arg(vm.key())
            .arg("--known-hosts")
            .arg(vm.known_hosts())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{verb}:\n{text}");
        assert!(out.status.success(), "nixpave {verb} failed:\n{text}");
        vm.ssh_ok("readlink -f /run/current-system")
            .expect("in the installed system")
            .trim()
            .to_string()
    };
    assert_eq!(nixpave("deploy"), next);
    assert_eq!(nixpave("rollback"), installed);
    eprintln!(
        "TIMINGS deploy+rollback on the installed system: {:?}",
        started.elapsed()
    );
}
