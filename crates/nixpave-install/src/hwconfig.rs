//! `--generate-hardware-config nixos-facter|nixos-generate-config PATH`: the machine's hardware
//! configuration, written beside the flake.
//!
//! When the installer has the asked-for tool, it runs there (`nixos-facter` → its JSON report for
//! `hardware.facter.reportPath`; `nixos-generate-config --show-hardware-config --no-filesystems` → a
//! NixOS module). Otherwise nixpave writes the module itself from facts gathered in one round trip
//! ([`FACTS_SCRIPT`], parsed by the pure [`parse`] and rendered by the pure [`render`]): storage, USB
//! and network controller modules from the sysfs modaliases, the CPU's microcode vendor and KVM
//! module, the virtualisation guest profile, initrd modules for the layout's stack (LVM, mdadm, LUKS)
//! and `boot.loader` for the firmware.

use std::collections::BTreeSet;

use nixpave_disk::Plan;
use nixpave_remote::{Transport, TransportError};
use serde::{Deserialize, Serialize};

/// Which generator the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// nixos-facter's JSON report (`hardware.facter.reportPath`).
    NixosFacter,
    /// A `hardware-configuration.nix` module.
    NixosGenerateConfig,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "nixos-facter" => Ok(Kind::NixosFacter),
            "nixos-generate-config" => Ok(Kind::NixosGenerateConfig),
            other => Err(format!(
                "unknown hardware configuration generator `{other}` (nixos-facter, nixos-generate-config)"
            )),
        }
    }
}

/// How the configuration was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The installer's own tool ran.
    Tool,
    /// nixpave generated a NixOS module from facts (the tool is not on the installer).
    Nixpave,
}

/// Generating failed.
#[derive(Debug, thiserror::Error)]
pub enum HwConfigError {
    /// The target could not be reached or a command could not run.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The tool or the facts script failed.
    #[error("{what} failed (exit {status:?}): {stderr}")]
    Failed {
        /// What ran.
        what: String,
        /// Its exit status.
        status: Option<i32>,
        /// Tail of its stderr.
        stderr: String,
    },
}

/// The hardware facts nixpave's own generator uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareFacts {
    /// `vendor_id` of the CPU (`GenuineIntel`, `AuthenticAMD`).
    pub cpu_vendor: String,
    /// True when the CPU offers hardware virtualisation (`vmx`/`svm`).
    pub cpu_virtualisation: bool,
    /// The hypervisor the machine runs under (`qemu`, `kvm`, `vmware`, `microsoft`, `oracle`, …), empty on bare metal.
    pub virt: String,
    /// Booted with UEFI.
    pub uefi: bool,
    /// Kernel modules of storage and USB controllers (from their modaliases).
    pub storage_modules: Vec<String>,
    /// Kernel modules of network controllers.
    pub network_modules: Vec<String>,
    /// `uname -m`.
    pub arch: String,
}

/// Prints `key=value` lines and `dev CLASS MODULE…` lines (POSIX sh, run as root on the installer).
pub const FACTS_SCRIPT: &str = r#"
exec 2>/dev/null
echo "arch=$(uname -m)"
echo "cpu_vendor=$(awk -F': ' '/^vendor_id/ {print $2; exit}' /proc/cpuinfo)"
if grep -qwE 'vmx|svm' /proc/cpuinfo; then echo cpu_virtualisation=1; fi
v=$(systemd-detect-virt --vm || true)
[ "$v" = none ] && v=
if [ -z "$v" ] && grep -qw hypervisor /proc/cpuinfo; then
  case "$(cat /sys/class/dmi/id/sys_vendor /sys/class/dmi/id/product_name)" in
    *QEMU*|*KVM*) v=qemu ;; *VMware*) v=vmware ;; *Microsoft*) v=microsoft ;; *innotek*|*VirtualBox*) v=oracle ;; *) v=other ;;
  esac
fi
echo "virt=$v"
[ -d /sys/firmware/efi ] && echo uefi=1
for d in /sys/bus/pci/devices/* /sys/bus/virtio/devices/*; do
  [ -r "$d/modalias" ] || continue
  class=$(cat "$d/class" 2>/dev/null || echo virtio)
  case "$d" in */virtio/*) class=virtio-$(cat "$d/device") ;; esac
  echo "dev $class $(modprobe -R "$(cat "$d/modalias")" | tr '\n' ' ')"
done
true
"#;

/// Parses [`FACTS_SCRIPT`]'s output (pure): PCI class 01 (storage) and 0c03 (USB) go to the storage
/// modules, 02 (network) to the network modules; virtio block/SCSI/network devices likewise, with
/// `virtio_pci` for the bus.
pub fn parse(output: &str) -> HardwareFacts {
    let mut f = HardwareFacts::default();
    let mut storage = BTreeSet::new();
    let mut network = BTreeSet::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("dev ") {
            let mut words = rest.split_whitespace();
            let class = words.next().unwrap_or_default();
            let modules: Vec<String> = words.map(String::from).collect();
            let target = match class {
                c if c.starts_with("0x01") || c.starts_with("0x0c03") => Some(&mut storage),
                c if c.starts_with("0x02") => Some(&mut network),
                // virtio device ids: 1 net, 2 block, 8 SCSI.
                "virtio-0x0002" | "virtio-0x0008" => Some(&mut storage),
                "virtio-0x0001" => Some(&mut network),
                _ => None,
            };
            if let Some(set) = target {
                set.extend(modules);
                if class.starts_with("virtio-") {
                    storage.insert("virtio_pci".to_string());
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "arch" => f.arch = value.into(),
            "cpu_vendor" => f.cpu_vendor = value.into(),
            "cpu_virtualisation" => f.cpu_virtualisation = value == "1",
            "virt" => f.virt = value.into(),
            "uefi" => f.uefi = value == "1",
            _ => {}
        }
    }
    f.storage_modules = storage.into_iter().collect();
    f.network_modules = network.into_iter().collect();
    f
}

/// Initrd modules for the layout's stack, from the programs its plan runs (pure): LVM needs
/// `dm-snapshot` (as nixos-generate-config adds), mdadm its RAID levels, LUKS `dm-crypt`.
pub fn stack_modules(plan: &Plan) -> Vec<String> {
    let mut out = BTreeSet::new();
    for op in &plan.operations {
        let Some(program) = op.argv.first().map(String::as_str) else {
            continue;
        };
        match program {
            "lvcreate" | "vgcreate" | "pvcreate" => {
                out.insert("dm-snapshot".to_string());
            }
            "cryptsetup" => {
                out.insert("dm-crypt".to_string());
            }
            "mdadm" => {
                for a in &op.argv {
                    if let Some(level) = a.strip_prefix("--level=") {
                        let level = level.trim_start_matches("raid");
                        out.insert(match level {
                            "0" | "1" | "10" => format!("raid{level}"),
                            "4" | "5" | "6" => "raid456".into(),
                            _ => continue,
                        });
                        out.insert("md_mod".into());
                    }
                }
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

fn nix_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|m| format!("\"{m}\"")).collect();
    format!("[ {} ]", quoted.join(" ")).replace("[  ]", "[ ]")
}

/// The NixOS module for `facts` and the layout's `stack` modules (pure). Every setting is a
/// `lib.mkDefault`, so the flake's own configuration wins.
pub fn render(facts: &HardwareFacts, stack: &[String]) -> String {
    render_for(facts, stack, "nixpave install --generate-hardware-config")
}

/// [`render`], saying in the header which command (`by`) generated the module (pure).
pub fn render_for(facts: &HardwareFacts, stack: &[String], by: &str) -> String {
    let mut s = format!(
        "# Generated by {by} from the machine's facts\n\
         # (storage, USB and network controllers from sysfs modaliases, CPU, virtualisation, firmware).\n\
         {{ config, lib, modulesPath, ... }}:\n\n{{\n",
    );
    match facts.virt.as_str() {
        "qemu" | "kvm" => {
            s.push_str("  imports = [ (modulesPath + \"/profiles/qemu-guest.nix\") ];\n\n")
        }
        _ => {
            s.push_str("  imports = [ (modulesPath + \"/installer/scan/not-detected.nix\") ];\n\n")
        }
    }
    let mut initrd: Vec<String> = facts.storage_modules.clone();
    initrd.extend(facts.network_modules.iter().cloned());
    initrd.sort();
    initrd.dedup();
    s.push_str(&format!(
        "  boot.initrd.availableKernelModules = {};\n",
        nix_list(&initrd)
    ));
    s.push_str(&format!(
        "  boot.initrd.kernelModules = {};\n",
        nix_list(stack)
    ));
    let kvm: Vec<String> = match (facts.cpu_virtualisation, facts.cpu_vendor.as_str()) {
        (true, "GenuineIntel") => vec!["kvm-intel".into()],
        (true, "AuthenticAMD") => vec!["kvm-amd".into()],
        _ => Vec::new(),
    };
    s.push_str(&format!("  boot.kernelModules = {};\n", nix_list(&kvm)));
    s.push_str("  boot.extraModulePackages = [ ];\n\n");
    if !facts.arch.is_empty() {
        s.push_str(&format!(
            "  nixpkgs.hostPlatform = lib.mkDefault \"{}-linux\";\n",
            facts.arch
        ));
    }
    match facts.cpu_vendor.as_str() {
        "GenuineIntel" => s.push_str(
            "  hardware.cpu.intel.updateMicrocode = lib.mkDefault config.hardware.enableRedistributableFirmware;\n",
        ),
        "AuthenticAMD" => s.push_str(
            "  hardware.cpu.amd.updateMicrocode = lib.mkDefault config.hardware.enableRedistributableFirmware;\n",
        ),
        _ => {}
    }
    if facts.uefi {
        s.push_str("  boot.loader.systemd-boot.enable = lib.mkDefault true;\n");
        s.push_str("  boot.loader.efi.canTouchEfiVariables = lib.mkDefault true;\n");
    } else {
        s.push_str("  boot.loader.grub.enable = lib.mkDefault true;\n");
    }
    s.push_str("}\n");
    s
}

fn run_checked(t: &dyn Transport, what: &str, argv: Vec<String>) -> Result<String, HwConfigError> {
    let out = t.run(&argv, None)?;
    if !out.success() {
        return Err(HwConfigError::Failed {
            what: what.into(),
            status: out.status,
            stderr: out.stderr_tail(10),
        });
    }
    Ok(out.stdout_str())
}

/// Generates the configuration on the target (the installer): the asked-for tool when it is
/// there, else nixpave's own module from facts and the layout's `plan` (when there is one).
pub fn generate(
    t: &dyn Transport,
    kind: Kind,
    plan: Option<&Plan>,
) -> Result<(String, Source), HwConfigError> {
    let tool = match kind {
        Kind::NixosFacter => "nixos-facter",
        Kind::NixosGenerateConfig => "nixos-generate-config",
    };
    let has_tool = t
        .run(
            &[
                "sh".into(),
                "-c".into(),
                format!("command -v {tool} >/dev/null"),
            ],
            None,
        )?
        .success();
    if has_tool {
        let argv: Vec<String> = match kind {
            Kind::NixosFacter => vec!["nixos-facter".into()],
            Kind::NixosGenerateConfig => [
                "nixos-generate-config",
                "--show-hardware-config",
                "--no-filesystems",
            ]
            .map(String::from)
            .to_vec(),
        };
        return Ok((run_checked(t, tool, argv)?, Source::Tool));
    }
    let stack = plan.map(stack_modules).unwrap_or_default();
    Ok((render(&gather(t)?, &stack), Source::Nixpave))
}

/// Runs [`FACTS_SCRIPT`] on the target and parses its output (also used by `nixpave init`).
pub fn gather(t: &dyn Transport) -> Result<HardwareFacts, HwConfigError> {
    let out = run_checked(
        t,
        "the hardware facts script",
        vec!["sh".into(), "-c".into(), FACTS_SCRIPT.into()],
    )?;
    Ok(parse(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a lab VM (qemu `pc`, TCG `-cpu max`, OVMF) in the test installer; the USB
    /// controller line is added (that VM has none) to cover class 0c03.
    const QEMU_UEFI: &str =
        "arch=x86_64\ncpu_vendor=AuthenticAMD\ncpu_virtualisation=1\nvirt=qemu\nuefi=1\n\
        dev 0x060000 \ndev 0x060100 \ndev 0x010180 \ndev 0x068000 \ndev 0x020000 virtio_pci \n\
        dev 0x00ff00 virtio_pci \ndev 0x010000 virtio_pci \ndev virtio-0x0001 virtio_net \n\
        dev virtio-0x0004 virtio_rng \ndev virtio-0x0002 virtio_blk \ndev 0x0c0330 xhci_pci \n";

    #[test]
    fn parses_controllers_by_class() {
        let f = parse(QEMU_UEFI);
        assert_eq!(f.storage_modules, ["virtio_blk", "virtio_pci", "xhci_pci"]);
        assert_eq!(f.network_modules, ["virtio_net", "virtio_pci"]);
        assert!(f.uefi && f.cpu_virtualisation);
        assert_eq!((f.virt.as_str(), f.arch.as_str()), ("qemu", "x86_64"));
    }

    #[test]
    fn renders_a_qemu_uefi_machine() {
        let stack = vec!["dm-crypt".to_string(), "md_mod".into(), "raid1".into()];
        insta::assert_snapshot!("qemu_uefi", render(&parse(QEMU_UEFI), &stack));
    }

    #[test]
    fn bare_metal_intel_bios() {
        let f = HardwareFacts {
            cpu_vendor: "GenuineIntel".into(),
            cpu_virtualisation: true,
            storage_modules: vec!["nvme".into()],
            arch: "x86_64".into(),
            ..Default::default()
        };
        let text = render(&f, &[]);
        assert!(text.contains("not-detected.nix"), "{text}");
        assert!(text.contains("[ \"kvm-intel\" ]"), "{text}");
        assert!(
            text.contains("hardware.cpu.intel.updateMicrocode"),
            "{text}"
        );
        assert!(text.contains("boot.loader.grub.enable"), "{text}");
        assert!(text.contains("boot.initrd.kernelModules = [ ];"), "{text}");
    }

    #[test]
    fn stack_modules_from_the_plan() {
        let op = |argv: &[&str]| nixpave_disk::Operation {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            device: String::new(),
            destructive: false,
            description: String::new(),
            guard: None,
            stdin: None,
        };
        let plan = Plan {
            mode: nixpave_disk::Mode::DestroyFormatMount,
            operations: vec![
                op(&["mdadm", "--create", "/dev/md/x", "--level=raid1"]),
                op(&["pvcreate", "/dev/md/x"]),
                op(&["cryptsetup", "luksFormat", "/dev/vg/x"]),
                op(&["mkfs.ext4", "/dev/vda2"]),
            ],
        };
        assert_eq!(
            stack_modules(&plan),
            ["dm-crypt", "dm-snapshot", "md_mod", "raid1"]
        );
    }

    /// The rendered module evaluates with the real nix: applied to a stand-in `lib` and `config`,
    /// every attribute is what it says.
    #[test]
    fn the_module_evaluates_with_nix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hardware-configuration.nix");
        std::fs::write(&file, render(&parse(QEMU_UEFI), &["raid1".into()])).unwrap();
        let expr = format!(
            "let m = import {} {{ config = {{ hardware.enableRedistributableFirmware = true; }}; \
             lib = {{ mkDefault = x: x; }}; modulesPath = \"/m\"; }}; in \
             {{ inherit (m) imports boot; amd = m.hardware.cpu.amd.updateMicrocode; \
               platform = m.nixpkgs.hostPlatform; }}",
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
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["imports"][0], "/m/profiles/qemu-guest.nix");
        assert_eq!(v["boot"]["initrd"]["kernelModules"][0], "raid1");
        assert_eq!(v["boot"]["kernelModules"][0], "kvm-amd");
        assert_eq!(v["boot"]["loader"]["systemd-boot"]["enable"], true);
        assert_eq!(v["amd"], true);
        assert_eq!(v["platform"], "x86_64-linux");
    }
}
