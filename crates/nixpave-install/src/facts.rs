//! The facts preflight needs, gathered in one round trip by a POSIX sh script.
//!
//! Parsing is a pure function of the script's output, so it is tested without a machine.

use nixpave_remote::{Transport, TransportError};
use serde::{Deserialize, Serialize};

/// One block device seen by the target's kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel path, e.g. `/dev/vda`.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// What preflight knows about a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFacts {
    /// `uname -s`, e.g. `Linux`.
    pub kernel: String,
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    /// `ID` from os-release.
    pub os_id: String,
    /// `VARIANT_ID` from os-release (`installer` on a NixOS installer).
    pub variant_id: String,
    /// Filesystem type of `/` (`rootfs`/`tmpfs` when running from RAM).
    pub root_fstype: String,
    /// Container technology, when the target is one (`docker`, `lxc`, …).
    pub container: Option<String>,
    /// `MemTotal` in KiB.
    pub mem_total_kib: u64,
    /// `kernel.kexec_load_disabled` (`None` when the kernel has no kexec at all).
    pub kexec_load_disabled: Option<bool>,
    /// True when a `kexec` binary is on PATH (the tarball brings its own; informational).
    pub has_kexec_binary: bool,
    /// True when `tar` is available (needed to unpack the installer tarball).
    pub has_tar: bool,
    /// True when `/etc/nixpave-installer` exists (nixpave's test installer has no os-release variant).
    pub installer_marker: bool,
    /// True when commands run as uid 0.
    pub is_root: bool,
    /// Whole disks.
    pub disks: Vec<BlockDevice>,
    /// Requested device paths and what they resolve to (`readlink -f`), when they exist.
    pub resolved: Vec<(String, String)>,
}

impl TargetFacts {
    /// True when the target already runs a NixOS installer (so kexec is not needed).
    pub fn is_installer(&self) -> bool {
        self.variant_id == "installer" || self.installer_marker
    }

    /// The size of a disk given by any path that resolves to it.
    pub fn disk_size(&self, device: &str) -> Option<u64> {
        let real = self
            .resolved
            .iter()
            .find(|(p, _)| p == device)
            .map(|(_, r)| r.as_str())
            .unwrap_or(device);
        self.disks
            .iter()
            .find(|d| d.path == real || d.path == device)
            .map(|d| d.size_bytes)
    }
}

/// The facts script; device paths to resolve are its positional arguments.
pub const FACTS_SCRIPT: &str = r#"
echo "kernel=$(uname -s)"
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then
  . /etc/os-release
  echo "os_id=${ID:-}"
  echo "variant_id=${VARIANT_ID:-}"
fi
echo "root_fstype=$(awk '$2 == "/" {t=$3} END {print t}' /proc/mounts 2>/dev/null)"
c=""
if command -v systemd-detect-virt >/dev/null 2>&1; then c=$(systemd-detect-virt --container 2>/dev/null); fi
[ "$c" = none ] && c=""
if [ -z "$c" ] && [ -f /.dockerenv ]; then c=docker; fi
if [ -z "$c" ] && [ -f /run/.containerenv ]; then c=podman; fi
if [ -z "$c" ] && [ -r /proc/1/environ ]; then c=$(tr '\0' '\n' < /proc/1/environ | sed -n 's/^container=//p' | head -n1); fi
echo "container=$c"
echo "mem_total_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
if [ -r /proc/sys/kernel/kexec_load_disabled ]; then echo "kexec_load_disabled=$(cat /proc/sys/kernel/kexec_load_disabled)"; fi
command -v kexec >/dev/null 2>&1 && echo "has_kexec_binary=1"
command -v tar >/dev/null 2>&1 && echo "has_tar=1"
[ -e /etc/nixpave-installer ] && echo "installer_marker=1"
echo "uid=$(id -u)"
for d in /sys/block/*; do
  n=${d##*/}
  case "$n" in loop*|ram*|zram*|sr*|fd*|dm-*|md*|nbd*) continue;; esac
  [ -r "$d/size" ] && echo "disk=/dev/$n $(( $(cat "$d/size") * 512 ))"
done
for p in "$@"; do
  [ -e "$p" ] && echo "resolve=$p $(readlink -f "$p")"
done
true
"#;

/// Parses the output of [`FACTS_SCRIPT`] (pure).
pub fn parse_facts(output: &str) -> TargetFacts {
    let mut f = TargetFacts::default();
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "kernel" => f.kernel = value.into(),
            "arch" => f.arch = value.into(),
            "os_id" => f.os_id = value.trim_matches('"').into(),
            "variant_id" => f.variant_id = value.trim_matches('"').into(),
            "root_fstype" => f.root_fstype = value.into(),
            "container" if !value.is_empty() => f.container = Some(value.into()),
            "mem_total_kib" => f.mem_total_kib = value.parse().unwrap_or(0),
            "kexec_load_disabled" => f.kexec_load_disabled = Some(value != "0"),
            "has_kexec_binary" => f.has_kexec_binary = true,
            "has_tar" => f.has_tar = true,
            "installer_marker" => f.installer_marker = true,
            "uid" => f.is_root = value == "0",
            "disk" => {
                if let Some((path, size)) = value.split_once(' ') {
                    f.disks.push(BlockDevice {
                        path: path.into(),
                        size_bytes: size.trim().parse().unwrap_or(0),
                    });
                }
            }
            "resolve" => {
                if let Some((path, real)) = value.split_once(' ') {
                    f.resolved.push((path.into(), real.trim().into()));
                }
            }
            _ => {}
        }
    }
    f
}

/// Gathers facts in one command; `devices` are paths to resolve (the layout's disks).
pub fn gather(
    transport: &dyn Transport,
    devices: &[String],
) -> Result<TargetFacts, TransportError> {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        FACTS_SCRIPT.into(),
        "facts".into(),
    ];
    argv.extend(devices.iter().cloned());
    let out = transport.run(&argv, None)?;
    if !out.success() {
        return Err(TransportError::Command {
            host: transport.host().to_string(),
            command: "sh -c <facts script>".into(),
            status: out.status,
            stderr: out.stderr_tail(10),
        });
    }
    Ok(parse_facts(&out.stdout_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_debian_vm() {
        let out = "kernel=Linux\narch=x86_64\nos_id=debian\nvariant_id=\nroot_fstype=ext4\ncontainer=\n\
                   mem_total_kib=2013256\nkexec_load_disabled=0\nhas_kexec_binary=1\nhas_tar=1\nuid=0\n\
                   disk=/dev/vda 4294967296\ndisk=/dev/vdb 1073741824\nresolve=/dev/disk/by-id/virtio-d1 /dev/vdb\n";
        let f = parse_facts(out);
        assert_eq!(f.kernel, "Linux");
        assert_eq!(f.mem_total_kib, 2013256);
        assert_eq!(f.kexec_load_disabled, Some(false));
        assert!(f.container.is_none() && f.is_root && f.has_tar && !f.is_installer());
        assert_eq!(f.disk_size("/dev/disk/by-id/virtio-d1"), Some(1 << 30));
        assert_eq!(f.disk_size("/dev/vda"), Some(4 << 30));
        assert_eq!(f.disk_size("/dev/sdz"), None);
    }

    #[test]
    fn recognises_installer_and_container() {
        let f = parse_facts(
            "os_id=nixos\nvariant_id=installer\ncontainer=lxc\nkexec_load_disabled=1\n",
        );
        assert!(f.is_installer());
        assert_eq!(f.container.as_deref(), Some("lxc"));
        assert_eq!(f.kexec_load_disabled, Some(true));
    }

    #[test]
    fn script_runs_on_this_machine() {
        let f = gather(&nixpave_remote::LocalTransport, &["/dev/null".into()]).unwrap();
        assert_eq!(f.kernel, "Linux");
        assert!(f.mem_total_kib > 0);
        assert_eq!(
            f.resolved,
            vec![("/dev/null".to_string(), "/dev/null".to_string())]
        );
    }
}
