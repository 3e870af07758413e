//! Block devices as `lsblk` describes them: the one `BlockDevice` type and the one lsblk parser.
//!
//! Host facts ([`crate::gather_facts`]) and the disk executor's probe (nixpave-disk) both ask
//! `lsblk` for [`LSBLK_COLUMNS`] and read its JSON with [`parse_lsblk`]. Pure: no IO here.

use serde::{Deserialize, Serialize};

/// Columns asked from `lsblk` (all exist in util-linux 2.37+).
pub const LSBLK_COLUMNS: &str = "NAME,KNAME,PATH,SIZE,TYPE,MODEL,SERIAL,WWN,TRAN,MOUNTPOINTS,START,PKNAME,RM,RO,FSTYPE,LABEL,UUID,PARTLABEL,PARTUUID,PARTTYPE,PTTYPE";

/// The same for util-linux before 2.37 (no MOUNTPOINTS, no START).
pub const LSBLK_COLUMNS_OLD: &str = "NAME,KNAME,PATH,SIZE,TYPE,MODEL,SERIAL,WWN,TRAN,MOUNTPOINT,PKNAME,RM,RO,FSTYPE,LABEL,UUID,PARTLABEL,PARTUUID,PARTTYPE,PTTYPE";

/// One block device as the kernel (and, after nixpave-disk's blkid merge, its on-disk
/// signatures) describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Device name as lsblk prints it (`sda1`, `loop0p2`, `cryptroot`).
    pub name: String,
    /// Kernel name (`dm-0` for device-mapper devices).
    #[serde(default)]
    pub kname: String,
    /// Device node (`/dev/sda1`, `/dev/mapper/cryptroot`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// lsblk type: `disk`, `part`, `loop`, `crypt`, `lvm`, `raid1`, `md`, `rom`, …
    #[serde(rename = "type", alias = "kind")]
    pub kind: String,
    /// Disk model, when the kernel knows it.
    pub model: Option<String>,
    /// Disk serial number, when the kernel knows it.
    pub serial: Option<String>,
    /// World wide name, when the kernel knows it.
    #[serde(default)]
    pub wwn: Option<String>,
    /// Transport (`sata`, `nvme`, `virtio`, …), when the kernel knows it.
    #[serde(default)]
    pub tran: Option<String>,
    /// Start of a partition in 512-byte sectors.
    #[serde(default)]
    pub start: Option<u64>,
    /// Partition number (from the partition table, or the trailing digits of the name).
    #[serde(default)]
    pub partn: Option<u32>,
    /// Filesystem or volume signature type (`ext4`, `swap`, `crypto_LUKS`, `LVM2_member`, …).
    pub fstype: Option<String>,
    /// Filesystem label.
    pub label: Option<String>,
    /// Filesystem UUID.
    pub uuid: Option<String>,
    /// GPT partition name.
    pub partlabel: Option<String>,
    /// Partition UUID (GPT) or `PTUUID-NN` (msdos).
    #[serde(default)]
    pub partuuid: Option<String>,
    /// Partition type (GPT type GUID or msdos `0xNN`).
    #[serde(default)]
    pub parttype: Option<String>,
    /// Partition table type on a whole device (`gpt`, `dos`).
    pub pttype: Option<String>,
    /// Removable device.
    #[serde(default)]
    pub removable: bool,
    /// Read-only device.
    #[serde(default)]
    pub read_only: bool,
    /// Where the device is mounted (several for btrfs subvolumes and bind mounts).
    pub mountpoints: Vec<String>,
    /// Devices stacked on this one (partitions, device-mapper, md).
    pub children: Vec<BlockDevice>,
}

impl BlockDevice {
    /// This device and every device stacked on it, depth first (parents before children).
    pub fn walk(&self) -> Vec<&BlockDevice> {
        let mut out = vec![self];
        for child in &self.children {
            out.extend(child.walk());
        }
        out
    }

    /// True for a whole device that can carry a partition table.
    pub fn is_whole(&self) -> bool {
        self.kind != "part"
    }

    /// True when this device or anything below it is mounted.
    pub fn in_use(&self) -> bool {
        !self.mountpoints.is_empty() || self.children.iter().any(BlockDevice::in_use)
    }
}

/// Parses `lsblk --json --bytes --output …` into a device tree. Numbers may be JSON numbers or
/// strings (older util-linux); `mountpoints` (2.37+) or `mountpoint` (older).
pub fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>, serde_json::Error> {
    let out: LsblkOutput = serde_json::from_str(json)?;
    Ok(out
        .blockdevices
        .into_iter()
        .map(BlockDevice::from)
        .collect())
}

/// The lsblk JSON shape (only the columns we ask for).
#[derive(Deserialize)]
struct LsblkOutput {
    blockdevices: Vec<LsblkDevice>,
}

#[derive(Deserialize)]
struct LsblkDevice {
    name: String,
    kname: Option<String>,
    path: Option<String>,
    size: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    wwn: Option<String>,
    tran: Option<String>,
    start: Option<serde_json::Value>,
    #[serde(default)]
    mountpoints: Vec<Option<String>>,
    mountpoint: Option<String>,
    fstype: Option<String>,
    label: Option<String>,
    uuid: Option<String>,
    partlabel: Option<String>,
    partuuid: Option<String>,
    parttype: Option<String>,
    pttype: Option<String>,
    partn: Option<serde_json::Value>,
    rm: Option<serde_json::Value>,
    ro: Option<serde_json::Value>,
    #[serde(default)]
    children: Vec<LsblkDevice>,
}

/// Numbers come as JSON numbers from `--bytes --json`, as strings from older util-linux.
fn json_u64(value: &Option<serde_json::Value>) -> Option<u64> {
    match value.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Flags come as booleans from newer util-linux, as `"0"`/`"1"` from older ones.
fn json_bool(value: &Option<serde_json::Value>) -> bool {
    match value {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Number(n)) => n.as_u64() == Some(1),
        Some(serde_json::Value::String(s)) => s.trim() == "1",
        _ => false,
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Trailing digits of a partition's kernel name (`nvme0n1p3` → 3, `sda12` → 12).
fn trailing_number(name: &str) -> Option<u32> {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

impl From<LsblkDevice> for BlockDevice {
    fn from(d: LsblkDevice) -> Self {
        let kind = d.kind.unwrap_or_default();
        let kname = d.kname.unwrap_or_else(|| d.name.clone());
        let partn = json_u64(&d.partn)
            .and_then(|n| u32::try_from(n).ok())
            .or_else(|| (kind == "part").then(|| trailing_number(&kname)).flatten());
        let mut mountpoints: Vec<String> = d.mountpoints.into_iter().flatten().collect();
        if let Some(mp) = d.mountpoint {
            if !mountpoints.contains(&mp) {
                mountpoints.push(mp);
            }
        }
        BlockDevice {
            path: d.path.unwrap_or_else(|| format!("/dev/{}", d.name)),
            name: d.name,
            kname,
            size: json_u64(&d.size).unwrap_or(0),
            kind,
            model: non_empty(d.model),
            serial: non_empty(d.serial),
            wwn: non_empty(d.wwn),
            tran: non_empty(d.tran),
            start: json_u64(&d.start),
            partn,
            fstype: non_empty(d.fstype),
            label: non_empty(d.label),
            uuid: non_empty(d.uuid),
            partlabel: non_empty(d.partlabel),
            partuuid: non_empty(d.partuuid),
            parttype: non_empty(d.parttype),
            pttype: non_empty(d.pttype),
            removable: json_bool(&d.rm),
            read_only: json_bool(&d.ro),
            mountpoints,
            children: d.children.into_iter().map(BlockDevice::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_old_lsblk_without_mountpoints_or_start() {
        let old = r#"{"blockdevices": [{"name": "sda", "kname": "sda", "path": "/dev/sda",
            "size": "1000", "type": "disk", "mountpoint": null, "children": [
              {"name": "sda1", "kname": "sda1", "path": "/dev/sda1", "size": "500",
               "type": "part", "mountpoint": "/boot"}]}]}"#;
        let devices = parse_lsblk(old).expect("old lsblk json");
        assert_eq!(devices[0].size, 1000);
        assert!(devices[0].mountpoints.is_empty());
        assert_eq!(
            devices[0].children[0].mountpoints,
            vec!["/boot".to_string()]
        );
        assert_eq!(devices[0].children[0].start, None);
        assert_eq!(devices[0].children[0].partn, Some(1));
    }
}
