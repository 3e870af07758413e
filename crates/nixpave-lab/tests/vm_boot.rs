//! Real qemu VMs (TCG here): boot to ssh, blank disks, the tools the installer and the disk engine need.
//! Ignored by default (minutes under TCG); `scripts/test-vm.sh` runs them.

use std::time::Instant;

use nixpave_lab::vm::{Vm, VmSpec};

use nixpave_testsupport::unique;

#[test]
#[ignore = "boots a qemu VM (about a minute under TCG); run by scripts/test-vm.sh"]
fn vm_boots_to_ssh_with_blank_disks_and_the_tools() {
    let name = unique("t-boot");
    let t0 = Instant::now();
    let vm = Vm::start(
        &VmSpec::new(&name)
            .disks(2)
            .disk_size(1 << 30)
            .memory_mib(1024),
    )
    .expect("VM starts");
    eprintln!(
        "TIMING vm_boot_to_ssh_seconds={:.1}",
        t0.elapsed().as_secs_f64()
    );

    // Blank disks of the asked size, with serial numbers.
    let disks = vm
        .ssh_ok("lsblk -dbno NAME,SIZE,SERIAL /dev/vdb /dev/vdc")
        .expect("lsblk");
    assert_eq!(
        disks.split_whitespace().collect::<Vec<_>>(),
        [
            "vdb",
            "1073741824",
            "nixpave-disk1",
            "vdc",
            "1073741824",
            "nixpave-disk2"
        ],
        "{disks}"
    );
    assert_eq!(
        vm.ssh_ok("blkid -p /dev/vdb; echo rc=$?")
            .expect("blkid")
            .trim(),
        "rc=2",
        "a new disk is blank"
    );
    // The guest is named after the VM and runs from its own disk.
    assert_eq!(vm.ssh_ok("hostname").expect("hostname").trim(), name);
    assert_eq!(
        vm.ssh_ok("findmnt -no SOURCE /").expect("findmnt").trim(),
        "/dev/vda1"
    );
    // Everything the disk engine and the installer call is there.
    let tools = "sgdisk parted sfdisk wipefs partx blkid lsblk findmnt mkfs.ext4 mkfs.vfat mkfs.btrfs mkfs.xfs \
                 cryptsetup pvcreate vgcreate lvcreate thin_check mdadm udevadm kexec grub-install nix-store nix \
                 sshd";
    let missing = vm
        .ssh_ok(&format!(
            "for t in {tools}; do command -v $t >/dev/null || echo $t; done"
        ))
        .expect("command -v");
    assert_eq!(missing.trim(), "", "missing tools in the guest");
    // Device mapper and md work in the guest (they don't on the host).
    vm.ssh_ok("test -e /dev/mapper/control && test -e /proc/mdstat")
        .expect("dm and md in the guest kernel");

    // Strict host-key checking: a known_hosts with another key is refused.
    let other = vm.dir().join("other_known_hosts");
    std::fs::write(
        &other,
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEn6vB1y5q4t0qkC1cQpZL3o0D8m7R2yH1kQ0e9yQpZL\n",
            vm.ssh_port()
        ),
    )
    .unwrap();
    let refused = std::process::Command::new("ssh")
        .args(vm.ssh_args().iter().map(|a| {
            if a.starts_with("UserKnownHostsFile=") {
                format!("UserKnownHostsFile={}", other.display())
            } else {
                a.clone()
            }
        }))
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a wrong host key must be refused"
    );

    let dir = vm.dir().to_path_buf();
    let pid = vm.pid().expect("pid");
    vm.destroy().expect("destroy");
    assert!(!dir.exists(), "state removed");
    // A zombie waiting for init to reap it has an empty cmdline.
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !cmdline.contains("qemu"),
        "qemu {pid} still runs after destroy"
    );
}

#[test]
#[ignore = "boots a qemu VM; run by scripts/test-vm.sh"]
fn vm_guard_stops_qemu_on_drop_and_a_name_is_refused_while_in_use() {
    let name = unique("t-drop");
    let vm = Vm::start(&VmSpec::new(&name).disks(0).memory_mib(512)).expect("VM starts");
    let pid = vm.pid().expect("pid");
    let second = Vm::start(&VmSpec::new(&name).disks(0));
    assert!(
        matches!(second, Err(nixpave_lab::vm::VmError::Exists { .. })),
        "{second:?}"
    );
    assert!(
        vm.is_running(),
        "the refused second start left the first alone"
    );
    let dir = vm.dir().to_path_buf();
    drop(vm);
    assert!(!dir.exists());
    let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!alive.contains("qemu"), "qemu {pid} still runs");
}
