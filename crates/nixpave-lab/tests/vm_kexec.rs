//! The test installer tarball (nixos-images format) works: from a running "any Linux" VM, `kexec/run` boots the
//! in-RAM installer, which comes back on the same address with the same host key (strict checking stays on),
//! root's authorized key, the disks and the tools. This is the install's first phase, done by hand.
//! Ignored by default (minutes under TCG); `scripts/test-vm.sh` runs it.

use std::time::{Duration, Instant};

use nixpave_lab::vm::{Vm, VmSpec};

#[test]
#[ignore = "boots a qemu VM and kexecs (a few minutes under TCG); run by scripts/test-vm.sh"]
fn vm_kexec_into_the_test_installer_keeps_keys_and_network() {
    let name = format!("t-kexec-{}", std::process::id());
    let vm = Vm::start(
        &VmSpec::new(&name)
            .disks(1)
            .disk_size(1 << 30)
            .memory_mib(2048),
    )
    .expect("VM starts");
    let tarball = vm.images().expect("images").installer_tarball();
    let before_addr = vm
        .ssh_ok("ip -o -4 addr show scope global | awk '{print $4}'")
        .expect("ip");
    let before_hostname = vm.ssh_ok("hostname").expect("hostname");

    let t0 = Instant::now();
    vm.upload(&tarball, "/root/installer.tar.gz", 0o600)
        .expect("upload");
    let upload = t0.elapsed();
    let run = vm
        .ssh_ok("cd /root && tar -xzf installer.tar.gz && ls kexec && setsid --wait kexec/run")
        .expect("kexec/run");
    assert!(
        run.contains("bzImage") && run.contains("initrd") && run.contains("run"),
        "{run}"
    );
    assert!(
        run.contains("machine will boot into the nixpave installer"),
        "{run}"
    );
    let t1 = Instant::now();
    vm.wait_for_ssh_gone(Duration::from_secs(60))
        .expect("the old system goes away");
    vm.wait_for_ssh(Duration::from_secs(300))
        .expect("the installer answers with the same host key");
    eprintln!(
        "TIMING installer_upload_seconds={:.1} kexec_to_ssh_seconds={:.1} tarball_bytes={}",
        upload.as_secs_f64(),
        t1.elapsed().as_secs_f64(),
        std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0)
    );

    // We are in the installer, running from RAM, with what kexec/run carried over.
    // It shows itself as the real installer does: os-release ID=nixos, VARIANT_ID=installer.
    let os_release = vm.ssh_ok("cat /etc/os-release").expect("os-release");
    assert!(
        os_release.contains("ID=nixos") && os_release.contains("VARIANT_ID=installer"),
        "{os_release}"
    );
    let root_fs = vm
        .ssh_ok("findmnt -no FSTYPE / || stat -f -c %T /")
        .expect("root fs");
    assert!(
        matches!(root_fs.trim(), "rootfs" | "tmpfs" | "ramfs"),
        "root is in RAM: {root_fs}"
    );
    assert_eq!(
        vm.ssh_ok("ip -o -4 addr show scope global | awk '{print $4}'")
            .expect("ip"),
        before_addr
    );
    assert_eq!(vm.ssh_ok("hostname").expect("hostname"), before_hostname);
    assert!(
        vm.ssh_ok("grep -c nixpave.installer=1 /proc/cmdline")
            .is_ok(),
        "booted by kexec/run"
    );
    // The old root disk is free to be wiped, the data disk is there, and the tools work.
    assert_eq!(
        vm.ssh_ok("findmnt -rno TARGET -S /dev/vda1; echo end")
            .expect("findmnt")
            .trim(),
        "end"
    );
    assert!(vm.ssh_ok("lsblk -dno NAME").expect("lsblk").contains("vdb"));
    vm.ssh_ok("cryptsetup --version && lvm version && mdadm --version && nix-store --version && sgdisk --version")
        .expect("tools in the installer");
    vm.ssh_ok("test -e /dev/mapper/control")
        .expect("device mapper in the installer");
    // Writing a nix store works (the install copies closures into /mnt's store; here the in-RAM one).
    vm.ssh_ok("nix-store --init && nix-store --verify >/dev/null")
        .expect("nix store in RAM");

    // `reboot` works in the installer (no init system there) and the machine boots from its disk again.
    let t2 = Instant::now();
    let _ = vm.ssh(
        "setsid sh -c 'sleep 1; reboot' >/dev/null 2>&1 </dev/null &",
        None,
    );
    vm.wait_for_ssh_gone(Duration::from_secs(60))
        .expect("the installer goes down");
    vm.wait_for_ssh(Duration::from_secs(300))
        .expect("the guest boots from its disk again");
    eprintln!(
        "TIMING installer_reboot_to_ssh_seconds={:.1}",
        t2.elapsed().as_secs_f64()
    );
    assert_eq!(
        vm.ssh_ok("findmnt -no SOURCE /").expect("findmnt").trim(),
        "/dev/vda1"
    );
    assert!(vm
        .ssh("grep -q '^VARIANT_ID=installer' /etc/os-release", None)
        .map(|o| !o.success())
        .unwrap_or(false));
}
