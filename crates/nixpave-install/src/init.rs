//! `nixpave init`: a flake directory proposed for a machine from its facts.
//!
//! [`propose`] is pure: the host's facts (nixpave-remote's probe), its hardware facts
//! ([`crate::hwconfig`]'s probe) and the user's choices in, the three files out —
//! `flake.nix` (`nixosConfigurations.NAME` with disko and the hardware configuration imported,
//! `deploy.nodes.NAME` in deploy-rs's schema), `disk.nix` (a disko layout for the machine's real
//! disks) and `hardware-configuration.nix` (rendered by [`crate::hwconfig::render_for`]).
//! The layout is built as the JSON of `disko.devices`, checked and planned by nixpave-disk (so a
//! proposal that nixpave itself could not plan is never written), then printed as Nix.

use nixpave_disk::{Layout, Mode, PlanOptions};
use nixpave_remote::{BlockDevice, Facts};
use serde::Serialize;
use serde_json::{json, Value};

use crate::hwconfig::{self, HardwareFacts};

/// The disk layouts `init` can propose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    /// GPT: BIOS boot, ESP on `/boot`, ext4 root (the default).
    Ext4,
    /// As ext4, with a btrfs root holding `/`, `/home` and `/nix` subvolumes.
    Btrfs,
    /// BIOS boot, ESP, then LUKS holding an LVM volume group with an ext4 root.
    LuksLvm,
    /// Two disks of the same size: BIOS boot on both, ESP on the first, a mirrored ZFS pool.
    ZfsMirror,
}

impl LayoutKind {
    /// Every kind, in the order of the help text.
    pub const ALL: [LayoutKind; 4] = [
        LayoutKind::Ext4,
        LayoutKind::Btrfs,
        LayoutKind::LuksLvm,
        LayoutKind::ZfsMirror,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutKind::Ext4 => "ext4",
            LayoutKind::Btrfs => "btrfs",
            LayoutKind::LuksLvm => "luks-lvm",
            LayoutKind::ZfsMirror => "zfs-mirror",
        }
    }
}

impl std::str::FromStr for LayoutKind {
    type Err = String;
    fn from_str(s: &str) -> Result<LayoutKind, String> {
        LayoutKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown layout `{s}` (ext4, btrfs, luks-lvm, zfs-mirror)"))
    }
}

/// Where the LUKS passphrase file is read during the install (`--disk-encryption-keys`).
pub const LUKS_KEY_PATH: &str = "/tmp/disk.key";

/// Smallest disk a proposal uses: the 512 MiB ESP plus a root worth having.
pub const MIN_DISK_BYTES: u64 = 2 << 30;

/// What the user asked for and what the machine is.
#[derive(Debug, Clone)]
pub struct InitInput<'a> {
    /// The node's name (`nixosConfigurations.NAME`, `deploy.nodes.NAME`, `networking.hostName`).
    pub name: &'a str,
    /// `deploy.nodes.NAME.hostname`.
    pub hostname: &'a str,
    /// `deploy.nodes.NAME.sshUser`.
    pub ssh_user: &'a str,
    /// A non-default ssh port (goes to `sshOpts`).
    pub ssh_port: Option<u16>,
    /// The host's facts (disks, arch, firmware).
    pub facts: &'a Facts,
    /// The host's hardware facts (controllers, CPU, virtualisation).
    pub hardware: &'a HardwareFacts,
    /// The layout asked for; `None` is ext4.
    pub layout: Option<LayoutKind>,
    /// Only these devices may be used (`--disk`); empty: every whole disk. Loop devices are
    /// used only when named here.
    pub only_disks: &'a [String],
    /// Public keys that may log in as root on the new system (the login's authorized_keys).
    pub authorized_keys: &'a [String],
}

/// The proposal: files and what it chose.
#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    /// The layout used.
    pub layout: LayoutKind,
    /// The devices the layout formats, in order.
    pub disks: Vec<String>,
    /// `(file name, contents)`: flake.nix, disk.nix, hardware-configuration.nix.
    pub files: Vec<(String, String)>,
    /// Remarks for the user (other layouts that fit, what will be wiped).
    pub notes: Vec<String>,
}

/// Why no proposal could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// The node name cannot be a Nix attribute and host name.
    #[error("`{0}` is not a usable node name (letters, digits and `-`, starting with a letter)")]
    BadName(String),
    /// No disk fits.
    #[error("no usable disk: {0}")]
    NoDisk(String),
    /// A `--disk` names a device the host does not have.
    #[error("the host has no block device {0} (see `nixpave facts`)")]
    UnknownDisk(String),
    /// zfs-mirror without two disks of one size.
    #[error("zfs-mirror needs two disks of the same size; the host has {0}")]
    NoMirror(String),
    /// nixpave's own planner refused the layout (a bug in the proposal).
    #[error("the proposed layout does not plan: {0}")]
    Layout(String),
}

/// The whole disks a proposal may use, largest first (ties in path order): not removable, not
/// read-only, at least [`MIN_DISK_BYTES`], no zram/ram disks; loop devices only when in `only`.
pub fn candidate_disks<'f>(
    facts: &'f Facts,
    only: &[String],
) -> Result<Vec<&'f BlockDevice>, InitError> {
    for wanted in only {
        if !facts.disks.iter().any(|d| &d.path == wanted) {
            return Err(InitError::UnknownDisk(wanted.clone()));
        }
    }
    let mut disks: Vec<&BlockDevice> = facts
        .disks
        .iter()
        .filter(|d| {
            if only.is_empty() {
                d.kind == "disk" && !d.name.starts_with("zram") && !d.name.starts_with("ram")
            } else {
                only.contains(&d.path) && (d.kind == "disk" || d.kind == "loop")
            }
        })
        .filter(|d| !d.read_only && !d.removable && d.size >= MIN_DISK_BYTES)
        .collect();
    disks.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));
    Ok(disks)
}

/// The largest two disks of one size, when there are any.
pub fn mirror_pair<'f>(disks: &[&'f BlockDevice]) -> Option<(&'f BlockDevice, &'f BlockDevice)> {
    // `disks` is sorted largest first, so equal sizes are neighbours.
    disks
        .windows(2)
        .find(|w| w[0].size == w[1].size)
        .map(|w| (w[0], w[1]))
}

fn human(bytes: u64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 1024.0 {
        format!("{:.1} TiB", gib / 1024.0)
    } else {
        format!("{gib:.1} GiB")
    }
}

/// Refuses a node name that cannot be both a Nix attribute and a host name.
pub fn check_name(name: &str) -> Result<(), InitError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(InitError::BadName(name.to_string()))
    }
}

fn valid_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// ZFS wants a stable 8-hex-digit `networking.hostId`; derived from the name (FNV-1a) so the
/// same name always gets the same id.
pub fn host_id(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

fn bios_boot() -> Value {
    json!({ "size": "1M", "type": "EF02" })
}

fn esp() -> Value {
    json!({
        "size": "512M",
        "type": "EF00",
        "content": {
            "type": "filesystem",
            "format": "vfat",
            "mountpoint": "/boot",
            "mountOptions": ["umask=0077"],
        },
    })
}

fn gpt_disk(device: &str, partitions: Value) -> Value {
    json!({
        "type": "disk",
        "device": device,
        "content": { "type": "gpt", "partitions": partitions },
    })
}

/// The JSON of `disko.devices` for `kind` on `disks` (pure).
fn layout_json(kind: LayoutKind, disks: &[&str]) -> Value {
    let main = disks[0];
    match kind {
        LayoutKind::Ext4 => json!({ "disk": { "main": gpt_disk(main, json!({
            "boot": bios_boot(),
            "ESP": esp(),
            "root": { "size": "100%", "content": {
                "type": "filesystem", "format": "ext4", "mountpoint": "/" } },
        })) } }),
        LayoutKind::Btrfs => json!({ "disk": { "main": gpt_disk(main, json!({
            "boot": bios_boot(),
            "ESP": esp(),
            "root": { "size": "100%", "content": {
                "type": "btrfs",
                "extraArgs": ["-f"],
                "subvolumes": {
                    "@root": { "mountpoint": "/", "mountOptions": ["compress=zstd"] },
                    "@home": { "mountpoint": "/home", "mountOptions": ["compress=zstd"] },
                    "@nix": { "mountpoint": "/nix", "mountOptions": ["compress=zstd", "noatime"] },
                },
            } },
        })) } }),
        LayoutKind::LuksLvm => json!({
            "disk": { "main": gpt_disk(main, json!({
                "boot": bios_boot(),
                "ESP": esp(),
                "luks": { "size": "100%", "content": {
                    "type": "luks",
                    "name": "crypted",
                    "passwordFile": LUKS_KEY_PATH,
                    "settings": { "allowDiscards": true },
                    "content": { "type": "lvm_pv", "vg": "pool" },
                } },
            })) },
            "lvm_vg": { "pool": { "type": "lvm_vg", "lvs": {
                "root": { "size": "100%FREE", "content": {
                    "type": "filesystem", "format": "ext4", "mountpoint": "/" } },
            } } },
        }),
        LayoutKind::ZfsMirror => {
            let zfs = json!({ "size": "100%", "content": { "type": "zfs", "pool": "zroot" } });
            json!({
                "disk": {
                    "main": gpt_disk(disks[0], json!({
                        "boot": bios_boot(), "ESP": esp(), "zfs": zfs.clone() })),
                    "mirror": gpt_disk(disks[1], json!({ "boot": bios_boot(), "zfs": zfs })),
                },
                "zpool": { "zroot": {
                    "type": "zpool",
                    "mode": "mirror",
                    "options": { "ashift": "12" },
                    "rootFsOptions": {
                        "compression": "zstd",
                        "acltype": "posixacl",
                        "xattr": "sa",
                        "com.sun:auto-snapshot": "false",
                    },
                    "datasets": {
                        "root": { "type": "zfs_fs", "mountpoint": "/", "options": { "mountpoint": "legacy" } },
                        "nix": { "type": "zfs_fs", "mountpoint": "/nix", "options": { "mountpoint": "legacy" } },
                    },
                } },
            })
        }
    }
}

fn render_disk_nix(kind: LayoutKind, disks: &[&str], devices: &Value) -> String {
    let mut s = format!(
        "# Disk layout proposed by nixpave init ({}) for {}.\n\
         # Plan it with `nixpave disk plan disk.nix`; `nixpave install` wipes and formats these disks.\n\
         # Devices are the kernel's names as the facts probe saw them; /dev/disk/by-id/… paths work too.\n",
        kind.as_str(),
        disks.join(" and "),
    );
    if kind == LayoutKind::LuksLvm {
        s.push_str(&format!(
            "# The LUKS passphrase is read from {LUKS_KEY_PATH} on the installer: pass it with\n\
             # `nixpave install … --disk-encryption-keys {LUKS_KEY_PATH} ./disk.key` (or use askPassword = true).\n"
        ));
    }
    let body = nixpave_disk::nixos::to_nix(&json!({ "disko": { "devices": devices } }));
    s.push_str(&body);
    s
}

fn nix_str(s: &str) -> String {
    nixpave_nix::eval::nix_string(s)
}

fn render_flake(input: &InitInput<'_>, kind: LayoutKind, system: &str) -> String {
    let name = input.name;
    let keys: Vec<String> = input
        .authorized_keys
        .iter()
        .map(|k| format!("            {}\n", nix_str(k)))
        .collect();
    let keys = if keys.is_empty() {
        "[ ]".to_string()
    } else {
        format!("[\n{}          ]", keys.concat())
    };
    let zfs = if kind == LayoutKind::ZfsMirror {
        format!(
            "          # ZFS needs a stable host id (derived from the name by nixpave init).\n          networking.hostId = \"{}\";\n",
            host_id(name)
        )
    } else {
        String::new()
    };
    let ssh_opts = match input.ssh_port {
        Some(port) if port != 22 => format!("      sshOpts = [ \"-p\" \"{port}\" ];\n"),
        _ => String::new(),
    };
    format!(
        r#"# Written by nixpave init. Next: `nixpave install {name}`, then `nixpave deploy .#{name}`.
{{
  description = "{name}: a NixOS server";

  inputs = {{
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    disko.url = "github:nix-community/disko";
    disko.inputs.nixpkgs.follows = "nixpkgs";
  }};

  outputs = {{ self, nixpkgs, disko, ... }}: {{
    nixosConfigurations.{name} = nixpkgs.lib.nixosSystem {{
      system = "{system}";
      modules = [
        disko.nixosModules.disko
        ./disk.nix
        ./hardware-configuration.nix
        ({{ ... }}: {{
          networking.hostName = "{name}";
{zfs}          services.openssh.enable = true;
          # Root may log in with these keys (the host's authorized_keys and the key nixpave init used).
          users.users.root.openssh.authorizedKeys.keys = {keys};
          system.stateVersion = "24.11";
        }})
      ];
    }};

    # deploy-rs's schema: `nixpave deploy .#{name}` (deploy-rs itself wants the path wrapped in
    # deploy-rs.lib.{system}.activate.nixos; nixpave takes either).
    deploy.nodes.{name} = {{
      hostname = {hostname};
      sshUser = {user};
{ssh_opts}      profiles.system = {{
        user = "root";
        path = self.nixosConfigurations.{name}.config.system.build.toplevel;
      }};
    }};
  }};
}}
"#,
        hostname = nix_str(input.hostname),
        user = nix_str(input.ssh_user),
    )
}

/// Proposes the flake directory for `input` (pure).
pub fn propose(input: &InitInput<'_>) -> Result<Proposal, InitError> {
    check_name(input.name)?;
    let candidates = candidate_disks(input.facts, input.only_disks)?;
    let seen = || {
        let all: Vec<String> = input
            .facts
            .disks
            .iter()
            .filter(|d| d.kind == "disk" || input.only_disks.contains(&d.path))
            .map(|d| format!("{} ({})", d.path, human(d.size)))
            .collect();
        if all.is_empty() {
            "none".to_string()
        } else {
            all.join(", ")
        }
    };
    let Some(largest) = candidates.first() else {
        return Err(InitError::NoDisk(format!(
            "no writable, fixed disk of at least {} (disks seen: {})",
            human(MIN_DISK_BYTES),
            seen()
        )));
    };
    let pair = mirror_pair(&candidates);
    let kind = input.layout.unwrap_or(LayoutKind::Ext4);
    let disks: Vec<&str> = match kind {
        LayoutKind::ZfsMirror => match pair {
            Some((a, b)) => vec![a.path.as_str(), b.path.as_str()],
            None => return Err(InitError::NoMirror(seen())),
        },
        _ => vec![largest.path.as_str()],
    };
    let devices = layout_json(kind, &disks);
    let layout = Layout::from_json(&json!({ "disko": { "devices": devices.clone() } }))
        .map_err(|e| InitError::Layout(e.to_string()))?;
    let sizes = candidates
        .iter()
        .map(|d| (d.path.clone(), d.size))
        .collect();
    let plan = nixpave_disk::plan(
        &layout,
        Mode::DestroyFormatMount,
        &PlanOptions {
            disk_sizes: sizes,
            ..PlanOptions::default()
        },
    )
    .map_err(|e| InitError::Layout(e.to_string()))?;

    let mut hardware = input.hardware.clone();
    if hardware.arch.is_empty() {
        hardware.arch = input.facts.arch.clone();
    }
    let arch = if hardware.arch.is_empty() {
        "x86_64"
    } else {
        hardware.arch.as_str()
    };
    let system = format!("{arch}-linux");
    let hw = hwconfig::render_for(&hardware, &hwconfig::stack_modules(&plan), "nixpave init");

    let mut notes = Vec::new();
    for d in &disks {
        if let Some(dev) = input.facts.disks.iter().find(|x| x.path == *d) {
            if dev.in_use() {
                notes.push(format!(
                    "{d} holds the running system; `nixpave install` replaces it (kexec first)"
                ));
            }
        }
    }
    if kind != LayoutKind::ZfsMirror {
        if let Some((a, b)) = pair {
            notes.push(format!(
                "{} and {} are the same size ({}): `--layout zfs-mirror` mirrors them",
                a.path,
                b.path,
                human(a.size)
            ));
        }
    }
    if input.authorized_keys.is_empty() {
        notes.push(
            "no authorized key was found for the login: add one to flake.nix before installing, \
             or the new system cannot be reached"
                .into(),
        );
    }
    Ok(Proposal {
        layout: kind,
        disks: disks.iter().map(|d| d.to_string()).collect(),
        files: vec![
            ("flake.nix".into(), render_flake(input, kind, &system)),
            ("disk.nix".into(), render_disk_nix(kind, &disks, &devices)),
            ("hardware-configuration.nix".into(), hw),
        ],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn disk(path: &str, size: u64) -> BlockDevice {
        BlockDevice {
            name: path.trim_start_matches("/dev/").into(),
            path: path.into(),
            kind: "disk".into(),
            size,
            ..BlockDevice::default()
        }
    }

    /// A qemu VM with a system disk (in use) and two empty 8 GiB disks, as the facts probe reports it.
    fn vm_facts() -> Facts {
        let mut system = disk("/dev/vda", 4 * GIB);
        system.children = vec![BlockDevice {
            mountpoints: vec!["/".into()],
            kind: "part".into(),
            path: "/dev/vda1".into(),
            ..BlockDevice::default()
        }];
        let mut zram = disk("/dev/zram0", 8 * GIB);
        zram.name = "zram0".into();
        let mut cdrom = disk("/dev/sr0", 8 * GIB);
        cdrom.kind = "rom".into();
        Facts {
            arch: "x86_64".into(),
            disks: vec![
                system,
                disk("/dev/vdb", 8 * GIB),
                disk("/dev/vdc", 8 * GIB),
                zram,
                cdrom,
            ],
            ..Facts::default()
        }
    }

    fn hw() -> HardwareFacts {
        hwconfig::parse(
            "arch=x86_64\ncpu_vendor=GenuineIntel\ncpu_virtualisation=1\nvirt=qemu\n\
             dev virtio-0x0002 virtio_blk \ndev virtio-0x0001 virtio_net \n",
        )
    }

    fn input<'a>(
        facts: &'a Facts,
        hardware: &'a HardwareFacts,
        layout: Option<LayoutKind>,
    ) -> InitInput<'a> {
        InitInput {
            name: "web1",
            hostname: "203.0.113.7",
            ssh_user: "root",
            ssh_port: None,
            facts,
            hardware,
            layout,
            only_disks: &[],
            authorized_keys: &[],
        }
    }

    fn snapshot_all(p: &Proposal) -> String {
        let mut s = format!(
            "layout: {}\ndisks: {}\n",
            p.layout.as_str(),
            p.disks.join(" ")
        );
        for n in &p.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for (name, text) in &p.files {
            s.push_str(&format!("\n===== {name} =====\n{text}"));
        }
        s
    }

    #[test]
    fn default_is_ext4_on_the_largest_disk_and_offers_the_mirror() {
        let (f, h) = (vm_facts(), hw());
        let mut i = input(&f, &h, None);
        let keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@laptop".to_string()];
        i.authorized_keys = &keys;
        let p = propose(&i).unwrap();
        assert_eq!(p.disks, ["/dev/vdb"]);
        assert!(
            p.notes.iter().any(|n| n.contains("zfs-mirror")),
            "{:?}",
            p.notes
        );
        insta::assert_snapshot!("init_ext4", snapshot_all(&p));
    }

    #[test]
    fn every_layout_is_proposed_and_plans() {
        let (f, h) = (vm_facts(), hw());
        for kind in [
            LayoutKind::Btrfs,
            LayoutKind::LuksLvm,
            LayoutKind::ZfsMirror,
        ] {
            let mut i = input(&f, &h, Some(kind));
            i.ssh_port = Some(2222);
            let p = propose(&i).unwrap();
            insta::assert_snapshot!(format!("init_{}", kind.as_str()), snapshot_all(&p));
        }
    }

    #[test]
    fn mirror_only_with_two_disks_of_one_size() {
        let h = hw();
        let mut f = vm_facts();
        f.disks[2].size = 9 * GIB;
        let p = propose(&input(&f, &h, None)).unwrap();
        assert_eq!(p.disks, ["/dev/vdc"], "largest disk");
        assert!(
            !p.notes.iter().any(|n| n.contains("zfs-mirror")),
            "{:?}",
            p.notes
        );
        let e = propose(&input(&f, &h, Some(LayoutKind::ZfsMirror))).unwrap_err();
        assert!(matches!(e, InitError::NoMirror(_)), "{e}");
        assert!(e.to_string().contains("/dev/vdc (9.0 GiB)"), "{e}");
    }

    #[test]
    fn refusals() {
        let h = hw();
        let f = vm_facts();
        let mut i = input(&f, &h, None);
        i.name = "web.1";
        assert!(matches!(propose(&i), Err(InitError::BadName(_))));
        let only = ["/dev/nope".to_string()];
        let mut i = input(&f, &h, None);
        i.only_disks = &only;
        assert_eq!(
            propose(&i).unwrap_err(),
            InitError::UnknownDisk("/dev/nope".into())
        );
        let small = Facts {
            disks: vec![disk("/dev/sda", GIB)],
            ..Facts::default()
        };
        let e = propose(&input(&small, &h, None)).unwrap_err();
        assert!(e.to_string().contains("/dev/sda (1.0 GiB)"), "{e}");
    }

    #[test]
    fn loop_devices_only_when_named() {
        let h = hw();
        let mut l = disk("/dev/loop7", 3 * GIB);
        l.kind = "loop".into();
        let f = Facts {
            disks: vec![l],
            ..Facts::default()
        };
        assert!(matches!(
            propose(&input(&f, &h, None)),
            Err(InitError::NoDisk(_))
        ));
        let only = ["/dev/loop7".to_string()];
        let mut i = input(&f, &h, None);
        i.only_disks = &only;
        assert_eq!(propose(&i).unwrap().disks, ["/dev/loop7"]);
    }

    #[test]
    fn host_id_is_stable() {
        assert_eq!(host_id("web1"), host_id("web1"));
        assert_eq!(host_id("web1").len(), 8);
        assert_ne!(host_id("web1"), host_id("web2"));
    }
}
