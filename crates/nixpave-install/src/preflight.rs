//! Preflight: decide from facts alone whether an install can work, before anything is written.
//!
//! [`check`] is a pure function (facts + what the layout and installer need → refusals), so
//! every refusal is unit-tested; each refusal says the numbers it compared.

use nixpave_remote::{Facts, Transport, TransportError};
use serde::{Deserialize, Serialize};

/// What preflight knows about a target: nixpave-remote's [`Facts`], plus what the layout's device
/// paths resolve to there (`readlink -f`, for `/dev/disk/by-*` names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// The host's facts (one round trip).
    pub facts: Facts,
    /// Requested device paths and what they resolve to, when they exist.
    pub resolved: Vec<(String, String)>,
}

impl Observed {
    /// True when the target already runs a NixOS installer (os-release `ID=nixos`,
    /// `VARIANT_ID=installer`, or live media), so kexec is not needed.
    pub fn is_installer(&self) -> bool {
        self.facts.os.is_nixos_installer
    }

    /// The size of a whole disk given by any path that resolves to it.
    pub fn disk_size(&self, device: &str) -> Option<u64> {
        let real = self
            .resolved
            .iter()
            .find(|(p, _)| p == device)
            .map(|(_, r)| r.as_str())
            .unwrap_or(device);
        self.facts
            .disks
            .iter()
            .find(|d| d.path == real || d.path == device)
            .map(|d| d.size)
    }
}

/// Gathers the facts (nixpave-remote's script) and resolves `devices`, in two round trips.
pub fn observe(
    t: &dyn Transport,
    devices: &[String],
) -> Result<Observed, nixpave_remote::FactsError> {
    let facts = nixpave_remote::gather_facts(t)?;
    let mut resolved = Vec::new();
    if !devices.is_empty() {
        let script =
            "for p in \"$@\"; do [ -e \"$p\" ] && echo \"$p $(readlink -f \"$p\")\"; done; true";
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            script.into(),
            "resolve".into(),
        ];
        argv.extend(devices.iter().cloned());
        let out = t.run(&argv, None)?;
        if !out.success() {
            return Err(TransportError::Command {
                host: t.host().to_string(),
                command: "readlink -f <layout devices>".into(),
                status: out.status,
                stderr: out.stderr_tail(5),
            }
            .into());
        }
        for line in out.stdout_str().lines() {
            if let Some((p, r)) = line.split_once(' ') {
                resolved.push((p.to_string(), r.trim().to_string()));
            }
        }
    }
    Ok(Observed { facts, resolved })
}

/// What the installer's `kexec/run` (nixos-images) and nixpave's launcher need on the old system:
/// `tar` and `gzip` to unpack the tarball, `find | cpio | gzip` to append the carried-over keys and
/// network to the initrd, `setsid`/`nohup` to detach, `mktemp`, `readlink`, `sort` (kernel version
/// check), `grep` (authorized keys), `cat`, `cp`. The tarball brings its own `kexec` and `ip`.
pub const KEXEC_TOOLS: [&str; 12] = [
    "tar", "gzip", "cpio", "find", "setsid", "nohup", "mktemp", "readlink", "sort", "grep", "cat",
    "cp",
];

/// A disk the layout needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskNeed {
    /// The layout's name for it (`disko.devices.disk.NAME`).
    pub name: String,
    /// The device it is mapped to (after `--disk NAME=DEVICE`).
    pub device: String,
    /// The least size the layout's fixed-size contents need, in bytes.
    pub min_bytes: u64,
}

/// How much RAM the in-RAM installer needs, derived from its initrd size.
///
/// The compressed initrd is held in memory while the new kernel unpacks it, and the unpacked
/// root lives in RAM too; the factor covers both, the headroom covers the running installer
/// (sshd, nix, the disk tools) until /mnt exists. The defaults reproduce nixos-images'
/// documented 1.5 GB for its ~430 MB initrd.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RamPolicy {
    /// RAM per byte of compressed initrd.
    pub initrd_factor: f64,
    /// Fixed extra RAM in MiB.
    pub headroom_mib: u64,
}

impl Default for RamPolicy {
    fn default() -> Self {
        RamPolicy {
            initrd_factor: 2.5,
            headroom_mib: 384,
        }
    }
}

impl RamPolicy {
    /// RAM (KiB) needed for an initrd of `initrd_bytes`.
    pub fn needed_kib(&self, initrd_bytes: u64) -> u64 {
        (initrd_bytes as f64 * self.initrd_factor / 1024.0) as u64 + self.headroom_mib * 1024
    }
}

/// Everything preflight compares the facts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// True when the kexec phase will run (selected and the target is not an installer yet).
    pub kexec: bool,
    /// True when the disk phase will run.
    pub disk: bool,
    /// True when the reboot phase will run.
    #[serde(default)]
    pub reboot: bool,
    /// Size of the installer's initrd in bytes (from the tarball), when known.
    pub initrd_bytes: Option<u64>,
    /// The RAM rule.
    pub ram: RamPolicy,
    /// CPU architectures the system closure and installer are built for (`uname -m` spelling).
    pub arch: String,
    /// Disks the layout needs (empty when the disk phase does not run).
    pub disks: Vec<DiskNeed>,
}

/// One reason not to go on. Every variant carries the numbers it was decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// Not a Linux kernel.
    #[error("the target runs {kernel}, not Linux: kexec and the disk tools need Linux")]
    NotLinux {
        /// `uname -s`.
        kernel: String,
    },
    /// A container cannot kexec or own disks.
    #[error("the target is a {container} container: it cannot kexec or partition disks; run nixpave against the machine (or VM) itself")]
    Container {
        /// The container kind.
        container: String,
    },
    /// kexec is disabled or absent in the running kernel.
    #[error("kexec is unavailable: {why}; enable it (reboot with kexec allowed) or boot a NixOS installer and use --phases disk,install,reboot,verify")]
    KexecUnavailable {
        /// What was found.
        why: String,
    },
    /// Commands do not run as root.
    #[error("commands on the target do not run as root (uid ≠ 0): log in as root or use a user with passwordless sudo")]
    NotRoot,
    /// The host shares its kernel with the machine it runs on: kexec or reboot would hit that machine.
    #[error("the target shares its kernel with another system ({why}): kexec, partitioning or a reboot there would hit the machine it runs on; install onto the machine (or VM) itself")]
    SharedKernel {
        /// Why nixpave thinks so.
        why: String,
    },
    /// Tools the installer's `kexec/run` needs are missing on the old system.
    #[error("the target lacks {} needed by the installer's kexec/run (it unpacks the tarball and appends the carried-over keys and network to the initrd with find | cpio | gzip): install {} there, or boot a NixOS installer and leave kexec out of --phases", tools.join(", "), if tools.len() == 1 { "it" } else { "them" })]
    MissingTools {
        /// The missing tools.
        tools: Vec<String>,
    },
    /// Too little memory.
    #[error(
        "too little RAM for the installer: the target has {have_mib} MiB (MemTotal), the installer needs {need_mib} MiB \
         ({initrd_mib} MiB initrd × {factor} + {headroom_mib} MiB headroom); swap does not survive kexec"
    )]
    TooLittleRam {
        /// MemTotal in MiB.
        have_mib: u64,
        /// The requirement in MiB.
        need_mib: u64,
        /// Initrd size in MiB.
        initrd_mib: u64,
        /// The factor applied.
        factor: String,
        /// The headroom added.
        headroom_mib: u64,
    },
    /// The architecture differs from the closure's, or is unknown.
    #[error("the target's architecture is `{found}` but the system is built for `{expected}`")]
    WrongArch {
        /// `uname -m` on the target.
        found: String,
        /// What the system is built for.
        expected: String,
    },
    /// A layout disk is not there.
    #[error("disk `{name}` of the layout is {device}, which does not exist on the target (disks there: {present}); map it with --disk {name}=DEVICE")]
    DiskMissing {
        /// Layout disk name.
        name: String,
        /// The device path.
        device: String,
        /// The disks that exist, with sizes.
        present: String,
    },
    /// A layout disk is smaller than its fixed-size contents.
    #[error("disk `{name}` ({device}) has {have_mib} MiB but the layout needs at least {need_mib} MiB on it")]
    DiskTooSmall {
        /// Layout disk name.
        name: String,
        /// The device path.
        device: String,
        /// Its size in MiB.
        have_mib: u64,
        /// What the layout needs in MiB.
        need_mib: u64,
    },
}

const MIB: u64 = 1024 * 1024;

/// GPT overhead on a disk: the protective MBR and primary table before the first (1 MiB-aligned)
/// partition, the backup table at the end.
pub const GPT_OVERHEAD_BYTES: u64 = 2 * MIB;

/// The least size a layout disk needs (pure): for a GPT, the fixed-size partitions, 1 MiB for each
/// `100%` one and the table's overhead; 0 for contents nixpave cannot size from the layout alone.
pub fn min_disk_bytes(disk: &nixpave_disk::model::Disk) -> u64 {
    use nixpave_disk::model::size::{parse_size, Size};
    use nixpave_disk::model::Content;
    match &disk.content {
        Some(Content::Gpt(gpt)) => {
            gpt.partitions
                .iter()
                .map(|p| match parse_size(&p.size) {
                    Ok(Size::Bytes(b)) => b,
                    Ok(Size::Rest) => MIB,
                    Err(_) => 0,
                })
                .sum::<u64>()
                + GPT_OVERHEAD_BYTES
        }
        _ => 0,
    }
}

/// Architectures nixpave knows how to install (`uname -m` spelling).
pub const KNOWN_ARCHES: [&str; 4] = ["x86_64", "aarch64", "i686", "riscv64"];

/// Maps a nix system double (`x86_64-linux`) to `uname -m` (`x86_64`).
pub fn arch_of_system(system: &str) -> &str {
    system.split('-').next().unwrap_or(system)
}

/// Checks the facts against the requirements; an empty result means "go" (pure).
pub fn check(observed: &Observed, req: &Requirements) -> Vec<Refusal> {
    let facts = &observed.facts;
    let mut out = Vec::new();
    if facts.kernel_name != "Linux" {
        out.push(Refusal::NotLinux {
            kernel: if facts.kernel_name.is_empty() {
                "an unknown kernel".into()
            } else {
                facts.kernel_name.clone()
            },
        });
        return out;
    }
    // A container can still receive a closure into a mounted root; it cannot kexec or own disks.
    // A lab host says so precisely (it may also look like the container this machine is).
    match (&facts.kexec.container, &facts.shared_kernel) {
        (Some(c), _) if !facts.lab_host && (req.kexec || req.disk) => {
            out.push(Refusal::Container {
                container: c.clone(),
            })
        }
        (_, Some(why)) if req.kexec || req.disk || req.reboot => {
            out.push(Refusal::SharedKernel { why: why.clone() })
        }
        _ => {}
    }
    if !facts.is_root {
        out.push(Refusal::NotRoot);
    }
    if !KNOWN_ARCHES.contains(&facts.arch.as_str()) || facts.arch != req.arch {
        out.push(Refusal::WrongArch {
            found: if facts.arch.is_empty() {
                "unknown".into()
            } else {
                facts.arch.clone()
            },
            expected: req.arch.clone(),
        });
    }
    if req.kexec {
        match facts.kexec.load_disabled {
            None => out.push(Refusal::KexecUnavailable {
                why: "the kernel has no kexec support (/proc/sys/kernel/kexec_load_disabled is absent)".into(),
            }),
            Some(true) => out.push(Refusal::KexecUnavailable {
                why: "kernel.kexec_load_disabled = 1 (it cannot be re-enabled without a reboot)".into(),
            }),
            Some(false) => {}
        }
        let missing: Vec<String> = KEXEC_TOOLS
            .iter()
            .filter(|t| !facts.has_tool(t))
            .map(|t| t.to_string())
            .collect();
        if !missing.is_empty() {
            out.push(Refusal::MissingTools { tools: missing });
        }
        if let Some(initrd) = req.initrd_bytes {
            let need = req.ram.needed_kib(initrd);
            let have_kib = facts.memory_bytes / 1024;
            if have_kib < need {
                out.push(Refusal::TooLittleRam {
                    have_mib: have_kib / 1024,
                    need_mib: need.div_ceil(1024),
                    initrd_mib: initrd.div_ceil(MIB),
                    factor: req.ram.initrd_factor.to_string(),
                    headroom_mib: req.ram.headroom_mib,
                });
            }
        }
    }
    for need in &req.disks {
        match observed.disk_size(&need.device) {
            None => out.push(Refusal::DiskMissing {
                name: need.name.clone(),
                device: need.device.clone(),
                present: present_disks(facts),
            }),
            Some(size) if size < need.min_bytes => out.push(Refusal::DiskTooSmall {
                name: need.name.clone(),
                device: need.device.clone(),
                have_mib: size / MIB,
                need_mib: need.min_bytes.div_ceil(MIB),
            }),
            Some(_) => {}
        }
    }
    out
}

fn present_disks(facts: &Facts) -> String {
    if facts.disks.is_empty() {
        return "none".into();
    }
    facts
        .disks
        .iter()
        .map(|d| format!("{} {} MiB", d.path, d.size / MIB))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixpave_remote::{BlockDevice, KexecFacts, OsInfo};

    fn vm(mem_mib: u64) -> Observed {
        let disk = |path: &str, mib: u64| BlockDevice {
            path: path.into(),
            kind: "disk".into(),
            size: mib * MIB,
            ..Default::default()
        };
        Observed {
            facts: Facts {
                kernel_name: "Linux".into(),
                arch: "x86_64".into(),
                os: OsInfo {
                    id: "debian".into(),
                    ..Default::default()
                },
                root_fstype: "ext4".into(),
                memory_bytes: mem_mib * MIB,
                kexec: KexecFacts {
                    load_disabled: Some(false),
                    possible: true,
                    ..Default::default()
                },
                tools: KEXEC_TOOLS.iter().map(|t| t.to_string()).collect(),
                is_root: true,
                disks: vec![disk("/dev/vda", 4096), disk("/dev/vdb", 1024)],
                ..Default::default()
            },
            resolved: vec![("/dev/disk/by-id/virtio-d1".into(), "/dev/vdb".into())],
        }
    }

    fn req() -> Requirements {
        Requirements {
            kexec: true,
            disk: true,
            reboot: true,
            initrd_bytes: Some(188 * MIB),
            ram: RamPolicy::default(),
            arch: "x86_64".into(),
            disks: vec![DiskNeed {
                name: "main".into(),
                device: "/dev/vdb".into(),
                min_bytes: 600 * MIB,
            }],
        }
    }

    #[test]
    fn a_good_target_passes() {
        assert_eq!(check(&vm(2048), &req()), vec![]);
    }

    #[test]
    fn too_little_ram_says_the_numbers() {
        let r = check(&vm(512), &req());
        assert_eq!(r.len(), 1);
        let msg = r[0].to_string();
        assert!(
            msg.contains("512 MiB") && msg.contains("854 MiB") && msg.contains("188 MiB"),
            "{msg}"
        );
        // The installer already running means no kexec and no RAM rule.
        let mut no_kexec = req();
        no_kexec.kexec = false;
        assert_eq!(check(&vm(512), &no_kexec), vec![]);
    }

    #[test]
    fn nixos_images_default_matches_its_documented_minimum() {
        let need_mib = RamPolicy::default().needed_kib(430 * MIB) / 1024;
        assert!((1400..=1600).contains(&need_mib), "{need_mib}");
    }

    #[test]
    fn kexec_disabled_absent_and_container() {
        let mut f = vm(2048);
        f.facts.kexec.load_disabled = Some(true);
        f.facts.kexec.container = Some("lxc".into());
        f.facts.shared_kernel = Some("it is a container (lxc)".into());
        let r = check(&f, &req());
        assert!(matches!(r[0], Refusal::Container { .. }));
        assert!(r[1].to_string().contains("kexec_load_disabled = 1"));
        f.facts.kexec.load_disabled = None;
        f.facts.kexec.container = None;
        f.facts.shared_kernel = None;
        assert!(matches!(
            check(&f, &req())[0],
            Refusal::KexecUnavailable { .. }
        ));
    }

    #[test]
    fn missing_and_small_disks() {
        let mut r = req();
        r.disks.push(DiskNeed {
            name: "data".into(),
            device: "/dev/sdq".into(),
            min_bytes: 1,
        });
        r.disks[0].min_bytes = 2048 * MIB;
        let out = check(&vm(2048), &r);
        assert_eq!(out.len(), 2);
        assert!(out[0].to_string().contains("1024 MiB") && out[0].to_string().contains("2048 MiB"));
        let missing = out[1].to_string();
        assert!(
            missing.contains("/dev/sdq") && missing.contains("/dev/vda 4096 MiB"),
            "{missing}"
        );
    }

    #[test]
    fn not_linux_unknown_arch_not_root() {
        let mut f = vm(2048);
        f.facts.kernel_name = "FreeBSD".into();
        assert_eq!(check(&f, &req()).len(), 1);
        let mut f = vm(2048);
        f.facts.arch = "sparc64".into();
        f.facts.is_root = false;
        let r = check(&f, &req());
        assert!(r.contains(&Refusal::NotRoot));
        assert!(r
            .iter()
            .any(|x| matches!(x, Refusal::WrongArch { found, .. } if found == "sparc64")));
        assert_eq!(arch_of_system("aarch64-linux"), "aarch64");
    }

    #[test]
    fn a_shared_kernel_refuses_kexec_disk_and_reboot_but_not_the_install_alone() {
        let mut f = vm(2048);
        f.facts.lab_host = true;
        f.facts.kexec.container = Some("docker".into());
        f.facts.shared_kernel =
            Some("it is a nixpave lab host sharing the machine's kernel".into());
        let r = check(&f, &req());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].to_string().contains("lab host"), "{}", r[0]);
        let install_only = Requirements {
            kexec: false,
            disk: false,
            reboot: false,
            disks: Vec::new(),
            ..req()
        };
        assert_eq!(check(&f, &install_only), vec![]);
        let reboot_only = Requirements {
            reboot: true,
            ..install_only
        };
        assert!(matches!(
            check(&f, &reboot_only)[..],
            [Refusal::SharedKernel { .. }]
        ));
    }

    #[test]
    fn missing_tools_are_listed_and_only_matter_for_kexec() {
        let mut f = vm(2048);
        f.facts.tools.retain(|t| t != "cpio" && t != "setsid");
        let r = check(&f, &req());
        assert_eq!(
            r,
            vec![Refusal::MissingTools {
                tools: vec!["cpio".into(), "setsid".into()]
            }]
        );
        assert!(r[0].to_string().contains("lacks cpio, setsid"), "{}", r[0]);
        let mut no_kexec = req();
        no_kexec.kexec = false;
        assert_eq!(check(&f, &no_kexec), vec![]);
    }

    #[test]
    fn disks_resolve_through_by_id_links() {
        assert_eq!(
            vm(1).disk_size("/dev/disk/by-id/virtio-d1"),
            Some(1024 * MIB)
        );
        assert_eq!(vm(1).disk_size("/dev/vda"), Some(4096 * MIB));
        assert_eq!(vm(1).disk_size("/dev/sdz"), None);
    }

    #[test]
    fn min_disk_bytes_of_a_gpt_layout() {
        let layout = nixpave_disk::Layout::from_json(&serde_json::json!({
            "disk": { "main": { "type": "disk", "device": "/dev/vda", "content": {
                "type": "gpt", "partitions": {
                    "boot": { "size": "1M", "type": "EF02" },
                    "esp": { "size": "512M", "type": "EF00" },
                    "root": { "size": "100%" } } } } }
        }))
        .unwrap();
        assert_eq!(
            min_disk_bytes(&layout.disk["main"]),
            (1 + 512 + 1) * MIB + GPT_OVERHEAD_BYTES
        );
    }

    #[test]
    fn observes_this_machine() {
        let o = observe(&nixpave_remote::LocalTransport, &["/dev/null".into()]).unwrap();
        assert_eq!(o.facts.kernel_name, "Linux");
        assert_eq!(
            o.resolved,
            vec![("/dev/null".to_string(), "/dev/null".to_string())]
        );
    }

    #[test]
    fn refusals_serialise_with_their_numbers() {
        let r = check(&vm(256), &req());
        insta::assert_json_snapshot!("too_little_ram", r);
    }
}
