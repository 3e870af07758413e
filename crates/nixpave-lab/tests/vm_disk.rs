//! The disk engine for real inside a VM (device mapper and md work there, not on the host): `nixpave disk apply`
//! runs in the guest for LUKS on LVM, LVM thin, mdadm raid1 over two disks and btrfs (+ vfat), each verified with
//! findmnt/lsblk, then unmounted, mounted again, and formatted again (a no-op that keeps the data).
//! Ignored by default; `scripts/test-vm.sh` runs it (it builds the nixpave binary first).

use std::path::{Path, PathBuf};

use nixpave_lab::vm::{Vm, VmSpec};

/// The nixpave binary to copy into the guest: `NIXPAVE_BIN`, else the workspace's debug build.
fn nixpave_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NIXPAVE_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/nixpave");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p nixpave`; scripts/test-vm.sh does) or set NIXPAVE_BIN",
        bin.display()
    );
    bin
}

/// What one layout must produce under /mnt.
struct Expect {
    layout: &'static str,
    /// (mount point, filesystem type) pairs that `findmnt` must show.
    mounts: &'static [(&'static str, &'static str)],
    /// A shell check of the block-device stack that must succeed.
    stack_check: &'static str,
}

const LAYOUTS: &[Expect] = &[
    Expect {
        layout: "luks-on-lvm",
        mounts: &[
            ("/mnt", "ext4"),
            ("/mnt/boot", "vfat"),
            ("/mnt/home", "xfs"),
        ],
        stack_check:
            "lsblk -rno TYPE /dev/vdb | grep -qx crypt && lsblk -rno TYPE /dev/vdb | grep -qx lvm \
                      && cryptsetup status cryptroot | grep -q 'type:.*LUKS2' \
                      && test \"$(findmnt -no SOURCE /mnt)\" = /dev/mapper/cryptroot",
    },
    Expect {
        layout: "lvm-thin",
        mounts: &[("/mnt", "ext4")],
        stack_check:
            "lvs --noheadings -o lv_name,segtype thinvg | grep -q '^ *pool  *thin-pool *$' \
                      && lvs --noheadings -o lv_name,segtype thinvg | grep -q '^ *root  *thin *$'",
    },
    Expect {
        layout: "mdadm-raid1",
        mounts: &[("/mnt", "ext4")],
        stack_check:
            "grep -A1 '^md' /proc/mdstat | grep -q raid1 && grep '^md' /proc/mdstat | grep -q vdb2 \
                      && grep '^md' /proc/mdstat | grep -q vdc2",
    },
    Expect {
        layout: "btrfs",
        mounts: &[
            ("/mnt", "btrfs"),
            ("/mnt/boot", "vfat"),
            ("/mnt/nix", "btrfs"),
            ("/mnt/swap", "btrfs"),
        ],
        stack_check: "btrfs subvolume list /mnt | grep -q '@nix' && test -f /mnt/swap/swapfile \
                      && findmnt -no OPTIONS /mnt/nix | grep -q noatime",
    },
];

fn apply(vm: &Vm, layout: &str, mode: &str) -> String {
    let extra = if mode.contains("destroy") {
        " --yes-wipe-all-disks"
    } else {
        ""
    };
    let command =
        format!("nixpave disk apply /root/layouts/{layout}.json --mode {mode}{extra} 2>&1");
    let out = vm.ssh(&command, None).expect("ssh");
    let text = out.stdout_text();
    assert!(out.success(), "`{command}` failed in the VM:\n{text}");
    text
}

fn mounts_under_mnt(vm: &Vm) -> Vec<(String, String)> {
    let text = vm
        .ssh_ok("findmnt -rno TARGET,FSTYPE | awk '$1 ~ \"^/mnt(/|$)\"' | sort")
        .expect("findmnt");
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, f)| (t.to_string(), f.to_string()))
        .collect()
}

fn uuids(vm: &Vm) -> String {
    vm.ssh_ok(
        "blkid -s UUID -o value /dev/vdb* /dev/vdc* /dev/mapper/* /dev/md/* 2>/dev/null | sort",
    )
    .expect("blkid")
}

/// apply destroy,format,mount → verify → unmount → mount → data still there → format again changes nothing.
fn check_layout(vm: &Vm, e: &Expect) {
    apply(vm, e.layout, "destroy,format,mount");
    let mut expected: Vec<(String, String)> = e
        .mounts
        .iter()
        .map(|(t, f)| (t.to_string(), f.to_string()))
        .collect();
    expected.sort();
    assert_eq!(mounts_under_mnt(vm), expected, "{}: mounts", e.layout);
    vm.ssh_ok(e.stack_check)
        .unwrap_or_else(|err| panic!("{}: block-device stack: {err}", e.layout));
    vm.ssh_ok("echo kept > /mnt/marker && sync")
        .expect("write marker");

    apply(vm, e.layout, "unmount");
    assert_eq!(
        mounts_under_mnt(vm),
        vec![],
        "{}: unmount leaves nothing mounted",
        e.layout
    );
    apply(vm, e.layout, "mount");
    assert_eq!(
        mounts_under_mnt(vm),
        expected,
        "{}: mounted again",
        e.layout
    );
    assert_eq!(vm.ssh_ok("cat /mnt/marker").expect("marker").trim(), "kept");

    let before = uuids(vm);
    let format_again = apply(vm, e.layout, "format");
    assert_eq!(
        uuids(vm),
        before,
        "{}: formatting again changes no filesystem\n{format_again}",
        e.layout
    );
    assert_eq!(
        vm.ssh_ok("cat /mnt/marker").expect("marker").trim(),
        "kept",
        "{}: data kept",
        e.layout
    );
    apply(vm, e.layout, "unmount");
}

#[test]
#[ignore = "boots a qemu VM and runs nixpave disk apply in it (minutes under TCG); run by scripts/test-vm.sh"]
fn vm_disk_apply_luks_lvm_thin_mdadm_btrfs_for_real() {
    let name = format!("t-disk-{}", std::process::id());
    let vm = Vm::start(
        &VmSpec::new(&name)
            .disks(2)
            .disk_size(3 << 30)
            .memory_mib(1536),
    )
    .expect("VM starts");

    // A stripped copy of the binary travels faster (~4.5 MB/s under TCG).
    let stripped = vm.dir().join("nixpave");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(nixpave_binary())
        .status()
        .expect("strip");
    assert!(status.success());
    vm.upload(&stripped, "/usr/local/bin/nixpave", 0o755)
        .expect("upload nixpave");
    vm.ssh_ok("mkdir -p /root/layouts && umask 077 && printf 'vm-test-secret' > /tmp/secret.key")
        .expect("key file");
    let layouts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm_layouts");
    for e in LAYOUTS {
        vm.upload(
            &layouts.join(format!("{}.json", e.layout)),
            &format!("/root/layouts/{}.json", e.layout),
            0o644,
        )
        .expect("upload layout");
    }

    // Each layout runs to the end even when an earlier one failed (destroy clears what it left), so one run
    // shows every broken layout; the test fails at the end listing them.
    let mut failures = Vec::new();
    for e in LAYOUTS {
        let t0 = std::time::Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_layout(&vm, e)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", e.layout));
            // Leave nothing mounted for the next layout's destroy.
            let _ = vm.ssh("umount -R /mnt; swapoff -a", None);
        }
        eprintln!(
            "TIMING vm_disk_{}_seconds={:.1}",
            e.layout.replace('-', "_"),
            t0.elapsed().as_secs_f64()
        );
    }

    // The same engine driven from the host over ssh (the install's path): the layout file is local, the key file
    // and the disks are the VM's.
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(nixpave_binary())
        .args(["disk", "apply"])
        .arg(layouts.join("luks-on-lvm.json"))
        .args([
            "--mode",
            "destroy,format,mount",
            "--yes-wipe-all-disks",
            "--target",
        ])
        .arg(format!("root@127.0.0.1:{}", vm.ssh_port()))
        .arg("-i")
        .arg(vm.key())
        .arg("--known-hosts")
        .arg(vm.known_hosts())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("nixpave runs");
    assert!(
        out.status.success(),
        "disk apply --target failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected: Vec<(String, String)> = LAYOUTS[0]
        .mounts
        .iter()
        .map(|(t, f)| (t.to_string(), f.to_string()))
        .collect();
    expected.sort();
    assert_eq!(mounts_under_mnt(&vm), expected, "luks-on-lvm over ssh");
    assert!(
        vm.ssh("test -e /mnt/marker", None)
            .map(|o| !o.success())
            .unwrap_or(false),
        "destroy wiped the previous data"
    );
    eprintln!(
        "TIMING vm_disk_luks_on_lvm_over_ssh_seconds={:.1}",
        t0.elapsed().as_secs_f64()
    );
    init_proposes_for_the_vm_and_its_layout_applies(&vm);
    assert!(
        failures.is_empty(),
        "layouts that failed in the VM:\n{}",
        failures.join("\n\n")
    );
}

/// `nixpave init` against this VM (a system disk and two 3 GiB disks): the mirror is offered for the
/// two equal disks, `--layout zfs-mirror` takes both, and the luks-lvm layout it writes for vdb is
/// applied for real (`nixpave disk apply` over ssh) and mounts as proposed. A few seconds on top of
/// the VM the test already booted.
fn init_proposes_for_the_vm_and_its_layout_applies(vm: &Vm) {
    let t0 = std::time::Instant::now();
    let work = vm.dir().join("init");
    let init = |dir: &str, extra: &[&str]| {
        let out = std::process::Command::new(nixpave_binary())
            .args(["init", "vm1", "--target"])
            .arg(format!("root@127.0.0.1:{}", vm.ssh_port()))
            .arg("-i")
            .arg(vm.key())
            .arg("--known-hosts")
            .arg(vm.known_hosts())
            .arg("--dir")
            .arg(work.join(dir))
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("nixpave runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "init {extra:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let stdout = init("default", &[]);
    assert!(
        stdout.contains("/dev/vdb and /dev/vdc are the same size (3.0 GiB)"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&init("mirror", &["--layout", "zfs-mirror", "--json"])).unwrap();
    assert_eq!(
        v["disks"],
        serde_json::json!(["/dev/vdb", "/dev/vdc"]),
        "{v}"
    );
    let flake = std::fs::read_to_string(work.join("mirror/flake.nix")).unwrap();
    assert!(
        flake.contains(&format!("sshOpts = [ \"-p\" \"{}\" ];", vm.ssh_port())),
        "{flake}"
    );
    init("luks", &["--layout", "luks-lvm", "--disk", "/dev/vdb"]);
    let hw = std::fs::read_to_string(work.join("luks/hardware-configuration.nix")).unwrap();
    assert!(
        hw.contains("qemu-guest.nix") && hw.contains("\"dm-crypt\""),
        "{hw}"
    );
    assert!(hw.contains("\"virtio_blk\""), "{hw}");

    vm.ssh_ok("umount -R /mnt 2>/dev/null; umask 077 && printf 'init-secret' > /tmp/disk.key")
        .expect("key file");
    let out = std::process::Command::new(nixpave_binary())
        .args(["disk", "apply"])
        .arg(work.join("luks/disk.nix"))
        .args([
            "--mode",
            "destroy,format,mount",
            "--yes-wipe-all-disks",
            "--target",
        ])
        .arg(format!("root@127.0.0.1:{}", vm.ssh_port()))
        .arg("-i")
        .arg(vm.key())
        .arg("--known-hosts")
        .arg(vm.known_hosts())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("nixpave runs");
    assert!(
        out.status.success(),
        "disk apply of init's luks-lvm layout failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mounts_under_mnt(vm),
        [
            ("/mnt".to_string(), "ext4".to_string()),
            ("/mnt/boot".into(), "vfat".into())
        ]
    );
    vm.ssh_ok("test \"$(findmnt -no SOURCE /mnt)\" = /dev/mapper/pool-root && cryptsetup status crypted >/dev/null")
        .expect("root is an LV inside LUKS");
    eprintln!(
        "TIMING vm_disk_init_seconds={:.1}",
        t0.elapsed().as_secs_f64()
    );
}
