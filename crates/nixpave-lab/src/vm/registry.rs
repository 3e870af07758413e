//! Where VMs keep their state, the inventory entry each one writes, and listing them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Vm, VmError};

/// The root of VM state directories: `NIXPAVE_LAB_VM_DIR`, else the lab directory (`NIXPAVE_LAB_DIR`, default
/// `/var/lib/nixpave/lab`), one directory per VM beside the network-namespace labs, so a VM's `inventory.json`
/// resolves like a lab's (`nixpave exec NAME -- …`). VM directories are marked by a `vm.json` file.
pub fn state_root() -> PathBuf {
    ["NIXPAVE_LAB_VM_DIR", "NIXPAVE_LAB_DIR"]
        .iter()
        .find_map(|var| std::env::var_os(var).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::hosts::DEFAULT_LAB_DIR))
}

/// The file that marks a directory under [`state_root`] as a VM's (and records how it was started).
pub(crate) const MARKER: &str = "vm.json";

/// Whether `dir` is a VM's state directory (and not a network-namespace lab's).
pub(crate) fn is_vm_dir(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Accepts names usable as directory names, hostnames and ssh Host aliases.
pub(crate) fn check_name(name: &str) -> Result<(), VmError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(VmError::BadName(name.into()))
    }
}

/// A VM's inventory file (`inventory.json` in its state directory): the format of `nixpave_remote::Inventory`
/// (the lab's), so `nixpave` commands reach a VM like any lab host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The hosts (exactly one for a VM).
    pub hosts: Vec<InventoryHost>,
}

/// One host of an inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryHost {
    /// Host name.
    pub name: String,
    /// Address to ssh to.
    pub host: String,
    /// Port to ssh to.
    pub port: u16,
    /// User to log in as.
    pub user: String,
    /// Private key file.
    pub identity_file: PathBuf,
    /// known_hosts file holding the host's key.
    pub known_hosts: PathBuf,
}

impl Inventory {
    /// The inventory of one VM.
    pub fn for_vm(name: &str, port: u16, key: &Path, known_hosts: &Path) -> Inventory {
        Inventory {
            hosts: vec![InventoryHost {
                name: name.into(),
                host: "127.0.0.1".into(),
                port,
                user: "root".into(),
                identity_file: key.to_path_buf(),
                known_hosts: known_hosts.to_path_buf(),
            }],
        }
    }

    /// An ssh_config snippet with one `Host` block per host.
    pub fn ssh_config(&self) -> String {
        self.hosts
            .iter()
            .map(|h| {
                format!(
                    "Host {}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
                     UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n",
                    h.name,
                    h.host,
                    h.port,
                    h.user,
                    h.identity_file.display(),
                    h.known_hosts.display()
                )
            })
            .collect()
    }
}

/// Writes `inventory.json` and `ssh_config` into a VM's state directory.
pub(crate) fn write_inventory(dir: &Path, inventory: &Inventory) -> Result<(), VmError> {
    let json = serde_json::to_string_pretty(inventory).unwrap_or_default();
    let path = dir.join("inventory.json");
    std::fs::write(&path, json + "\n").map_err(|e| VmError::io("writing", &path, e))?;
    let path = dir.join("ssh_config");
    std::fs::write(&path, inventory.ssh_config()).map_err(|e| VmError::io("writing", &path, e))
}

/// Reads a VM's `inventory.json`.
pub(crate) fn read_inventory(dir: &Path) -> Result<Inventory, VmError> {
    let path = dir.join("inventory.json");
    let text = std::fs::read_to_string(&path).map_err(|e| VmError::io("reading", &path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        VmError::io(
            "parsing",
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// What `lab vm status` shows about one VM. With `--json` the VM's name is in `host`, as in every
/// `--json` output (README, "JSON output").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmStatus {
    /// Name (`host` in JSON).
    #[serde(rename = "host")]
    pub name: String,
    /// Whether its qemu process runs.
    pub running: bool,
    /// qemu's pid.
    pub pid: Option<u32>,
    /// The loopback ssh port.
    pub ssh_port: u16,
    /// Its state directory.
    pub dir: PathBuf,
}

/// Every VM with a state directory under [`state_root`], sorted by name.
pub fn list() -> Vec<VmStatus> {
    let root = state_root();
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| is_vm_dir(&e.path()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| Vm::open(&name).ok())
        .map(|vm| VmStatus {
            name: vm.name().to_string(),
            running: vm.is_running(),
            pid: vm.pid(),
            ssh_port: vm.ssh_port(),
            dir: vm.dir().to_path_buf(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["t1", "vm-a_2", "x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a b", "-x", "a/b", &"x".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_rows_carry_the_name_in_host() {
        let row = VmStatus {
            name: "vm1".into(),
            running: false,
            pid: None,
            ssh_port: 2222,
            dir: "/var/tmp/vms/vm1".into(),
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({"host": "vm1", "running": false, "pid": null, "ssh_port": 2222,
                "dir": "/var/tmp/vms/vm1"})
        );
    }

    #[test]
    fn inventory_round_trips_and_renders_ssh_config() {
        let inv = Inventory::for_vm(
            "t1",
            40022,
            Path::new("/v/t1/id_ed25519"),
            Path::new("/v/t1/known_hosts"),
        );
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
        assert_eq!(
            inv.ssh_config(),
            "Host t1\n  HostName 127.0.0.1\n  Port 40022\n  User root\n  IdentityFile /v/t1/id_ed25519\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile /v/t1/known_hosts\n  StrictHostKeyChecking yes\n"
        );
    }
}
