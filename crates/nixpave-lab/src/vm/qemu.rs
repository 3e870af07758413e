//! The qemu command line of a lab VM (a pure function of the VM's files and settings) and accelerator choice.

use std::path::PathBuf;

/// How qemu runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// Software emulation (works everywhere, ~10x slower).
    Tcg,
}

impl Accel {
    /// `NIXPAVE_LAB_ACCEL=kvm|tcg` when set; otherwise KVM only when /dev/kvm opens read-write and this machine is
    /// not itself a guest (nested KVM under another hypervisor hangs stock kernels on the machines we test on).
    pub fn detect() -> Accel {
        match std::env::var("NIXPAVE_LAB_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let kvm_opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let nested = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| cpu_flags_say_guest(&c))
            .unwrap_or(true);
        if kvm_opens && !nested {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// True when /proc/cpuinfo's flags include `hypervisor` (this machine is a VM).
fn cpu_flags_say_guest(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
}

/// Everything the qemu command line of one VM refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuLayout {
    /// VM name (also the guest's hostname).
    pub name: String,
    /// The copy-on-write root disk (first virtio disk, /dev/vda in the guest; BIOS boots from it).
    pub root_disk: PathBuf,
    /// Blank data disks (/dev/vdb, /dev/vdc, …).
    pub data_disks: Vec<PathBuf>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Loopback port forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// Serial console log.
    pub console_log: PathBuf,
    /// QEMU monitor socket (used to stop the VM cleanly).
    pub monitor_socket: PathBuf,
    /// qemu's pid file.
    pub pid_file: PathBuf,
    /// File with the client public key(s) the guest authorises for root (passed through fw_cfg).
    pub authorized_keys: PathBuf,
    /// The guest's ssh host private key (passed through fw_cfg).
    pub host_key: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// UEFI firmware (OVMF): the read-only code and this VM's own, writable variable store (boot
    /// entries written by an installer survive the guest's reboots). `None`: SeaBIOS.
    pub uefi: Option<UefiFirmware>,
}

/// OVMF's two flash images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFirmware {
    /// `OVMF_CODE*.fd` (read-only).
    pub code: PathBuf,
    /// This VM's copy of `OVMF_VARS*.fd`.
    pub vars: PathBuf,
}

/// Debian's `ovmf` package: firmware code and the pristine variable store, 4 MiB flavour.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// See [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl QemuLayout {
    /// The `qemu-system-x86_64` arguments (without the program name). qemu daemonizes once the VM runs.
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&self.accel.args());
        if let Some(fw) = &self.uefi {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    fw.code.display()
                ),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", fw.vars.display()),
            ]);
        }
        push(&[
            "-machine",
            "pc",
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
            "-name",
            &format!("nixpave-{}", self.name),
            "-display",
            "none",
            "-vga",
            "none",
            "-serial",
            &format!("file:{}", self.console_log.display()),
            "-monitor",
            &format!("unix:{},server,nowait", self.monitor_socket.display()),
            "-pidfile",
            &self.pid_file.display().to_string(),
            "-daemonize",
            "-nic",
            &format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{}-:22",
                self.ssh_port
            ),
            "-device",
            "virtio-rng-pci",
            "-drive",
            &format!(
                "file={},if=none,id=root,format=qcow2,cache=unsafe,discard=unmap",
                self.root_disk.display()
            ),
            // SeaBIOS would otherwise try a blank data disk first and hang there, silently.
            "-device",
            "virtio-blk-pci,drive=root,bootindex=0",
        ]);
        for (i, disk) in self.data_disks.iter().enumerate() {
            push(&[
                "-drive",
                &format!(
                    "file={},if=none,id=data{i},format=qcow2,cache=unsafe,discard=unmap",
                    disk.display()
                ),
                "-device",
                &format!("virtio-blk-pci,drive=data{i},serial=nixpave-disk{}", i + 1),
            ]);
        }
        push(&[
            "-fw_cfg",
            &format!(
                "name=opt/nixpave/authorized_keys,file={}",
                self.authorized_keys.display()
            ),
            "-fw_cfg",
            &format!(
                "name=opt/nixpave/ssh_host_ed25519_key,file={}",
                self.host_key.display()
            ),
            "-fw_cfg",
            &format!("name=opt/nixpave/hostname,string={}", self.name),
        ]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> QemuLayout {
        let d = PathBuf::from("/v/t1");
        QemuLayout {
            name: "t1".into(),
            root_disk: d.join("root.qcow2"),
            data_disks: vec![d.join("disk1.qcow2"), d.join("disk2.qcow2")],
            memory_mib: 2048,
            cpus: 1,
            ssh_port: 40022,
            console_log: d.join("console.log"),
            monitor_socket: d.join("monitor.sock"),
            pid_file: d.join("qemu.pid"),
            authorized_keys: d.join("authorized_keys"),
            host_key: d.join("ssh_host_ed25519_key"),
            accel: Accel::Tcg,
            uefi: None,
        }
    }

    #[test]
    fn qemu_command_line() {
        let argv = layout().argv().join(" ");
        assert_eq!(
            argv,
            "-accel tcg,thread=multi -cpu max -machine pc -m 2048 -smp 1 -name nixpave-t1 -display none -vga none \
             -serial file:/v/t1/console.log -monitor unix:/v/t1/monitor.sock,server,nowait -pidfile /v/t1/qemu.pid \
             -daemonize -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40022-:22 \
             -device virtio-rng-pci \
             -drive file=/v/t1/root.qcow2,if=none,id=root,format=qcow2,cache=unsafe,discard=unmap \
             -device virtio-blk-pci,drive=root,bootindex=0 \
             -drive file=/v/t1/disk1.qcow2,if=none,id=data0,format=qcow2,cache=unsafe,discard=unmap \
             -device virtio-blk-pci,drive=data0,serial=nixpave-disk1 \
             -drive file=/v/t1/disk2.qcow2,if=none,id=data1,format=qcow2,cache=unsafe,discard=unmap \
             -device virtio-blk-pci,drive=data1,serial=nixpave-disk2 \
             -fw_cfg name=opt/nixpave/authorized_keys,file=/v/t1/authorized_keys \
             -fw_cfg name=opt/nixpave/ssh_host_ed25519_key,file=/v/t1/ssh_host_ed25519_key \
             -fw_cfg name=opt/nixpave/hostname,string=t1"
        );
    }

    #[test]
    fn uefi_boots_ovmf_with_its_own_variable_store() {
        let mut l = layout();
        l.uefi = Some(UefiFirmware {
            code: OVMF_CODE.into(),
            vars: "/v/t1/OVMF_VARS.fd".into(),
        });
        let argv = l.argv().join(" ");
        assert!(
            argv.starts_with(
                "-accel tcg,thread=multi -cpu max \
                 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
                 -drive if=pflash,format=raw,unit=1,file=/v/t1/OVMF_VARS.fd -machine pc"
            ),
            "{argv}"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let mut l = layout();
        l.accel = Accel::Kvm;
        assert_eq!(l.argv()[..4], ["-accel", "kvm", "-cpu", "host"]);
    }

    #[test]
    fn nested_guests_are_recognised_from_cpu_flags() {
        assert!(cpu_flags_say_guest(
            "processor: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n"
        ));
        assert!(!cpu_flags_say_guest(
            "processor: 0\nflags\t\t: fpu vme lahf_lm\n"
        ));
    }
}
