//! What a host is: OS, architecture, memory, kexec, disks, nix, systemd, privileges.
//!
//! Gathered by one shell script in one round trip ([`gather_facts`]); its output is parsed by
//! a pure function ([`parse_facts`]) that is unit-tested without a machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blockdev::{self, BlockDevice, LSBLK_COLUMNS, LSBLK_COLUMNS_OLD};
use crate::transport::{Transport, TransportError};

/// The script run on the host (POSIX sh); its arguments are the lsblk columns, new and old.
const SCRIPT: &str = include_str!("facts.sh");

/// Everything nixpave needs to know about a host before acting on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// Operating system, from os-release.
    pub os: OsInfo,
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    /// `uname -r`.
    pub kernel: String,
    /// `uname -s`, e.g. `Linux`.
    #[serde(default)]
    pub kernel_name: String,
    /// Total RAM in bytes.
    pub memory_bytes: u64,
    /// Whether this host can kexec into an installer, and why not.
    pub kexec: KexecFacts,
    /// Top-level block devices (disks, loop devices), partitions as children.
    pub disks: Vec<BlockDevice>,
    /// `nix --version` when nix is installed.
    pub nix_version: Option<String>,
    /// Where `nix` was found (a profile's `bin` on NixOS and nix installs, `/usr/bin` on Debian's nix-bin).
    #[serde(default)]
    pub nix_path: Option<String>,
    /// True when the host booted with systemd as init.
    pub systemd: bool,
    /// The login user commands ran as (after escalation).
    pub user: String,
    /// True when commands run as root.
    pub is_root: bool,
    /// Escalation tools present: `sudo`, `doas`, `run0`.
    pub escalation_tools: Vec<String>,
    /// Filesystem type of `/`.
    pub root_fstype: String,
    /// True on a `nixpave lab` host (it shares this machine's kernel: never kexec it).
    pub lab_host: bool,
    /// Why the host shares its kernel with another system (a lab host, a container, a session in
    /// another mount namespace than PID 1's); `None` when it runs its own kernel. Such a host must
    /// never be kexec'd or rebooted: that would take the machine it runs on down with it.
    #[serde(default)]
    pub shared_kernel: Option<String>,
    /// Which of the tools an install uses on the old system are present (out of [`PROBED_TOOLS`]).
    #[serde(default)]
    pub tools: Vec<String>,
}

/// The tools whose presence [`Facts::tools`] reports: what a nixos-images `kexec/run` and its
/// launcher need on the old system, the downloaders, and the NixOS installer's own tools.
pub const PROBED_TOOLS: [&str; 17] = [
    "tar",
    "gzip",
    "cpio",
    "find",
    "setsid",
    "nohup",
    "mktemp",
    "readlink",
    "sort",
    "grep",
    "cat",
    "cp",
    "ip",
    "curl",
    "wget",
    "nixos-install",
    "nixos-enter",
];

/// A shell snippet that exits 3 (with a message on stderr) when the session shares its kernel with
/// another system: a `nixpave lab` host (its marker file), or a session in another mount namespace
/// than PID 1's (a container or lab host). Run it as root, in the same command and right before
/// anything that kexecs or reboots: it is the one guard install and deploy share.
pub const SHARED_KERNEL_GUARD: &str = "if [ -e /etc/ssh/nixpave-lab-host ]; then \
     echo 'this host shares its kernel with the machine it runs on (a nixpave lab host)' >&2; exit 3; fi; \
     if [ \"$(readlink /proc/1/ns/mnt)\" != \"$(readlink /proc/self/ns/mnt)\" ]; then \
     echo 'this host shares its kernel with the machine it runs on (container or lab host: another mount namespace than PID 1)' >&2; exit 3; fi";

/// The exit status of [`SHARED_KERNEL_GUARD`] when it refuses.
pub const SHARED_KERNEL_EXIT: i32 = 3;

impl Facts {
    /// True when `tool` (one of [`PROBED_TOOLS`]) is on the host's `PATH`.
    pub fn has_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }
}

/// os-release, with the questions nixpave asks of it answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    /// `ID`, e.g. `debian`, `nixos`.
    pub id: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
    /// `VERSION_ID`.
    pub version_id: String,
    /// `VARIANT_ID` (`installer` on newer NixOS installers).
    pub variant_id: String,
    /// True on NixOS.
    pub is_nixos: bool,
    /// True on a NixOS installer (live media), where kexec is not needed.
    pub is_nixos_installer: bool,
}

/// Whether kexec into an installer can work on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KexecFacts {
    /// True when nothing visible prevents kexec.
    pub possible: bool,
    /// Reasons it is not possible (empty when possible).
    pub blockers: Vec<String>,
    /// `kernel.kexec_load_disabled`; `None` when the kernel has no kexec.
    pub load_disabled: Option<bool>,
    /// Container technology when the host is one (`docker`, `lxc`, …).
    pub container: Option<String>,
    /// True when booted with UEFI.
    pub uefi: bool,
    /// Secure Boot state, when the firmware shows it.
    pub secure_boot: Option<bool>,
}

/// Why facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The host could not be reached or the script could not run.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The script ran but its output was not understood.
    #[error("{host}: cannot read the facts script's output: {reason}")]
    Parse {
        /// The host.
        host: String,
        /// What was wrong.
        reason: String,
    },
}

/// Runs the facts script on `transport` (one round trip) and parses its output.
pub fn gather_facts(transport: &dyn Transport) -> Result<Facts, FactsError> {
    let columns = [LSBLK_COLUMNS.to_string(), LSBLK_COLUMNS_OLD.to_string()];
    let out = transport.run_script(SCRIPT, &columns, None)?;
    parse_facts(&out.stdout_str()).map_err(|reason| FactsError::Parse {
        host: transport.host().to_string(),
        reason: if out.success() {
            reason
        } else {
            format!("{reason} (exit {:?}: {})", out.status, out.stderr_tail(3))
        },
    })
}

/// Parses the facts script's output. Pure.
pub fn parse_facts(output: &str) -> Result<Facts, String> {
    let (values, blocks) = split_output(output)?;
    let get = |key: &str| values.get(key).map(String::as_str).unwrap_or_default();
    let flag = |key: &str| get(key) == "1";
    let os = parse_os_release(
        blocks
            .get("os-release")
            .map(String::as_str)
            .unwrap_or_default(),
    );
    let os = OsInfo {
        is_nixos_installer: os.is_nixos && (os.variant_id == "installer" || flag("live_media")),
        ..os
    };
    let container = Some(get("container").to_string()).filter(|c| !c.is_empty());
    let load_disabled = values.get("kexec_load_disabled").map(|v| v.trim() != "0");
    let secure_boot = values.get("secure_boot").map(|v| v.trim() == "1");
    let lab_host = flag("lab_host");
    let mut blockers = Vec::new();
    match load_disabled {
        None => blockers.push("the kernel has no kexec support".to_string()),
        Some(true) => blockers.push("kernel.kexec_load_disabled is set".to_string()),
        Some(false) => {}
    }
    if let Some(c) = &container {
        blockers.push(format!("the host is a container ({c})"));
    }
    if secure_boot == Some(true) {
        blockers.push("Secure Boot is on (unsigned kernels cannot be kexec'd)".to_string());
    }
    let (ns_init, ns_self) = (get("mnt_ns_init").trim(), get("mnt_ns_self").trim());
    let shared_kernel = if lab_host {
        Some("it is a nixpave lab host sharing the machine's kernel".to_string())
    } else if let Some(c) = &container {
        Some(format!("it is a container ({c})"))
    } else if ns_init != ns_self {
        Some(if ns_init.is_empty() {
            "PID 1's mount namespace cannot be read, so it cannot be told apart from a container"
                .to_string()
        } else {
            format!("its session runs in another mount namespace ({ns_self}) than PID 1 ({ns_init}): a container or lab host")
        })
    } else {
        None
    };
    if lab_host {
        blockers.push("this is a nixpave lab host sharing the machine's kernel".to_string());
    } else if container.is_none() {
        if let Some(why) = &shared_kernel {
            blockers.push(format!("the host shares its kernel: {why}"));
        }
    }
    let uid = get("uid");
    let disks = match blocks.get("lsblk") {
        Some(json) if !json.trim().is_empty() => parse_lsblk(json)?,
        _ => Vec::new(),
    };
    Ok(Facts {
        os,
        arch: get("arch").to_string(),
        kernel: get("kernel").to_string(),
        kernel_name: get("kernel_name").trim().to_string(),
        memory_bytes: get("mem_total_kib").parse::<u64>().unwrap_or(0) * 1024,
        kexec: KexecFacts {
            possible: blockers.is_empty(),
            blockers,
            load_disabled,
            container,
            uefi: flag("uefi"),
            secure_boot,
        },
        disks,
        nix_version: values
            .get("nix_version")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        nix_path: values
            .get("nix_path")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        systemd: flag("systemd_booted"),
        user: get("user").to_string(),
        is_root: uid == "0",
        escalation_tools: ["sudo", "doas", "run0"]
            .into_iter()
            .filter(|t| flag(&format!("has_{t}")))
            .map(String::from)
            .collect(),
        root_fstype: get("root_fstype").to_string(),
        lab_host,
        shared_kernel,
        tools: get("tools").split_whitespace().map(String::from).collect(),
    })
}

type Sections = (BTreeMap<String, String>, BTreeMap<String, String>);

fn split_output(output: &str) -> Result<Sections, String> {
    let mut values = BTreeMap::new();
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut done = false;
    for line in output.lines() {
        if let Some((name, body)) = &mut current {
            if line.strip_prefix("@@end ") == Some(name.as_str()) {
                if let Some((name, body)) = current.take() {
                    blocks.insert(name, body);
                }
            } else {
                body.push_str(line);
                body.push('\n');
            }
        } else if let Some(name) = line.strip_prefix("@@begin ") {
            current = Some((name.to_string(), String::new()));
        } else if line == "@@done" {
            done = true;
        } else if let Some((key, value)) = line.split_once('=') {
            values.insert(key.to_string(), value.to_string());
        }
    }
    if !done {
        return Err("the output is incomplete (no end marker)".into());
    }
    Ok((values, blocks))
}

fn parse_os_release(text: &str) -> OsInfo {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            fields.insert(key.trim().to_string(), value.to_string());
        }
    }
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    OsInfo {
        is_nixos: field("ID") == "nixos",
        id: field("ID"),
        pretty_name: field("PRETTY_NAME"),
        version_id: field("VERSION_ID"),
        variant_id: field("VARIANT_ID"),
        is_nixos_installer: false,
    }
}

fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>, String> {
    Ok(blockdev::parse_lsblk(json)
        .map_err(|e| format!("lsblk JSON: {e}"))?
        .into_iter()
        // Detached loop devices and empty drives are not disks.
        .filter(|d| d.size > 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"arch=x86_64
kernel=6.1.0-18-amd64
uid=0
user=root
has_sudo=1
has_doas=0
has_run0=0
has_nix=1
nix_version=nix (Nix) 2.8.0
nix_path=/nix/var/nix/profiles/default/bin/nix
systemd_booted=1
mem_total_kib=2048000
kexec_load_disabled=0
uefi=1
secure_boot=0
container=
lab_host=0
kernel_name=Linux
tools= tar gzip cpio find setsid
mnt_ns_init=mnt:[4026531841]
mnt_ns_self=mnt:[4026531841]
live_media=0
root_fstype=ext4
@@begin os-release
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
ID=debian
VERSION_ID="12"
@@end os-release
@@begin lsblk
{
   "blockdevices": [
      {"name":"vda", "path":"/dev/vda", "type":"disk", "size":10737418240, "model":null, "serial":"abc123", "fstype":null, "label":null, "uuid":null, "partlabel":null, "mountpoints":[null], "rm":false, "ro":false, "pttype":"gpt",
         "children": [
            {"name":"vda1", "path":"/dev/vda1", "type":"part", "size":536870912, "model":null, "serial":null, "fstype":"vfat", "label":"EFI", "uuid":"AB-CD", "partlabel":"ESP", "mountpoints":["/boot"], "rm":false, "ro":false, "pttype":"gpt"},
            {"name":"vda2", "path":"/dev/vda2", "type":"part", "size":10200547328, "model":null, "serial":null, "fstype":"ext4", "label":null, "uuid":"u-1", "partlabel":"root", "mountpoints":["/"], "rm":false, "ro":false, "pttype":"gpt"}
         ]
      },
      {"name":"loop7", "path":"/dev/loop7", "type":"loop", "size":0, "mountpoints":[null]}
   ]
}
@@end lsblk
@@done
"#;

    #[test]
    fn parses_a_debian_host() {
        let f = parse_facts(DEBIAN).expect("parses");
        assert_eq!(f.os.id, "debian");
        assert_eq!(f.os.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        assert!(!f.os.is_nixos && !f.os.is_nixos_installer);
        assert_eq!(f.arch, "x86_64");
        assert_eq!(f.memory_bytes, 2048000 * 1024);
        assert!(f.kexec.possible, "{:?}", f.kexec.blockers);
        assert_eq!(f.kernel_name, "Linux");
        assert_eq!(f.shared_kernel, None);
        assert!(f.has_tool("cpio") && f.has_tool("setsid") && !f.has_tool("nixos-install"));
        assert_eq!(f.kexec.secure_boot, Some(false));
        assert!(f.kexec.uefi);
        assert_eq!(f.nix_version.as_deref(), Some("nix (Nix) 2.8.0"));
        assert_eq!(
            f.nix_path.as_deref(),
            Some("/nix/var/nix/profiles/default/bin/nix")
        );
        assert!(f.systemd && f.is_root);
        assert_eq!(f.escalation_tools, vec!["sudo"]);
        assert_eq!(f.disks.len(), 1, "size-0 loop devices are dropped");
        let vda = &f.disks[0];
        assert_eq!((vda.path.as_str(), vda.size), ("/dev/vda", 10737418240));
        assert_eq!(vda.serial.as_deref(), Some("abc123"));
        assert!(vda.mountpoints.is_empty(), "null mountpoints are dropped");
        assert_eq!(vda.children[0].fstype.as_deref(), Some("vfat"));
        assert_eq!(vda.children[1].mountpoints, vec!["/"]);
        assert!(vda.in_use());
    }

    #[test]
    fn nixos_installer_in_a_container_cannot_kexec() {
        let text = "uid=1000\nuser=nixos\ncontainer=lxc\nlive_media=1\n\
                    @@begin os-release\nID=nixos\nVARIANT_ID=installer\n@@end os-release\n@@done\n";
        let f = parse_facts(text).expect("parses");
        assert!(f.os.is_nixos && f.os.is_nixos_installer);
        assert!(!f.is_root);
        assert!(!f.kexec.possible);
        let blockers = f.kexec.blockers.join("; ");
        assert!(blockers.contains("no kexec support"), "{blockers}");
        assert!(blockers.contains("container (lxc)"), "{blockers}");
        assert!(f.disks.is_empty() && f.nix_version.is_none());
    }

    #[test]
    fn secure_boot_disabled_kexec_and_lab_hosts_are_blockers() {
        let text = "kexec_load_disabled=1\nsecure_boot=1\nlab_host=1\n@@done\n";
        let f = parse_facts(text).expect("parses");
        assert_eq!(f.kexec.blockers.len(), 3, "{:?}", f.kexec.blockers);
        assert_eq!(f.kexec.load_disabled, Some(true));
    }

    #[test]
    fn another_mount_namespace_than_pid_1_shares_the_kernel() {
        let text = "mnt_ns_init=mnt:[4026531841]\nmnt_ns_self=mnt:[4026532999]\nkexec_load_disabled=0\n@@done\n";
        let f = parse_facts(text).expect("parses");
        assert!(f
            .shared_kernel
            .as_deref()
            .unwrap_or_default()
            .contains("mount namespace"));
        assert!(!f.kexec.possible, "{:?}", f.kexec.blockers);
        // Unreadable: as unsafe as a difference, like the guard.
        let f = parse_facts("mnt_ns_init=\nmnt_ns_self=mnt:[1]\nkexec_load_disabled=0\n@@done\n")
            .expect("parses");
        assert!(f.shared_kernel.is_some() && !f.kexec.possible);
        let f = parse_facts(
            "mnt_ns_init=mnt:[1]\nmnt_ns_self=mnt:[1]\nkexec_load_disabled=0\n@@done\n",
        )
        .expect("parses");
        assert_eq!(f.shared_kernel, None);
        assert!(f.kexec.possible);
    }

    #[test]
    fn the_guard_refuses_inside_another_mount_namespace_and_passes_here() {
        let inside = std::process::Command::new("unshare")
            .args(["--mount", "sh", "-c", SHARED_KERNEL_GUARD])
            .output()
            .expect("unshare");
        assert_eq!(inside.status.code(), Some(SHARED_KERNEL_EXIT));
        assert!(String::from_utf8_lossy(&inside.stderr).contains("shares its kernel"));
        // PID 1 of its own pid namespace (with its own /proc) runs in PID 1's mount namespace: it passes.
        let own = std::process::Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc", "sh", "-c"])
            .arg(format!("{SHARED_KERNEL_GUARD}; echo go"))
            .output()
            .expect("unshare");
        assert_eq!(
            String::from_utf8_lossy(&own.stdout).trim(),
            "go",
            "{}",
            String::from_utf8_lossy(&own.stderr)
        );
    }

    #[test]
    fn old_lsblk_strings_and_single_mountpoint() {
        let text = "@@begin lsblk\n{\"blockdevices\":[{\"name\":\"sda\",\"type\":\"disk\",\
                    \"size\":\"1000\",\"rm\":\"1\",\"ro\":\"0\",\"mountpoint\":\"/mnt\"}]}\n\
                    @@end lsblk\n@@done\n";
        let f = parse_facts(text).expect("parses");
        assert_eq!(f.disks[0].path, "/dev/sda");
        assert_eq!(f.disks[0].size, 1000);
        assert!(f.disks[0].removable && !f.disks[0].read_only);
        assert_eq!(f.disks[0].mountpoints, vec!["/mnt"]);
    }

    #[test]
    fn truncated_output_is_an_error() {
        assert!(parse_facts("arch=x86_64\n").is_err());
        let bad = "@@begin lsblk\n{not json\n@@end lsblk\n@@done\n";
        assert!(parse_facts(bad).unwrap_err().contains("lsblk"));
    }

    #[test]
    fn the_script_runs_here() {
        let facts = gather_facts(&crate::LocalTransport).expect("facts of this machine");
        assert!(!facts.arch.is_empty() && !facts.kernel.is_empty());
        assert!(facts.memory_bytes > 0);
        assert!(!facts.os.id.is_empty());
        assert_eq!(facts.kernel_name, "Linux");
        assert!(facts.has_tool("tar"));
        // The facts and the guard agree about this machine (a container in CI, or its own kernel).
        let guard = std::process::Command::new("sh")
            .args(["-c", SHARED_KERNEL_GUARD])
            .output()
            .expect("sh");
        assert_eq!(
            facts.shared_kernel.is_some(),
            guard.status.code() == Some(SHARED_KERNEL_EXIT),
            "{:?}",
            facts.shared_kernel
        );
    }
}
